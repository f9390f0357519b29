"""``salt-seg export-onnx RUN --out DIR``: a trained run as two ONNX graphs (image encoder, prompt decoder)."""

from __future__ import annotations

import argparse

from salt_seg.commands.common import add_base_model_flags

HELP = (
    "export a trained run (adapter merged) as ONNX: image encoder + prompt/mask decoder, for --backend onnx"
)
DESCRIPTION = (
    "Merge the run's adapter into its base and export two ONNX graphs, as segment-anything's own export splits "
    "SAM: encoder.onnx (slices -> image embedding, plus the full-resolution branch's features) and decoder.onnx "
    "(one slice's features + prompts as labelled points: points, a box as two corners, or a learned class token "
    "-> mask logits and predicted IoU), with salt_seg_onnx.json (preprocessing record, classes). The export is "
    "checked on ONNX Runtime against PyTorch and the largest differences are printed and recorded. Use it with "
    "`salt-seg predict --backend onnx --model DIR`. Needs the onnx extra: pip install 'salt-seg[onnx]'."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", help="a trained run directory or adapter .safetensors file")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RUN/onnx)")
    add_base_model_flags(parser)
    parser.add_argument(
        "--force",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="replace an existing export in --out (--overwrite is the old name, kept for one release)",
    )
    parser.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="load the adapter even if the base weights differ from the ones it was trained on",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from salt_seg.inference import load_inference_model
    from salt_seg.inference.onnx_model import INSTALL_HINT, export_onnx

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    model_path = Path(args.model)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no such run directory or adapter file")
    if args.out is not None:
        out = Path(args.out)
    elif model_path.is_dir():
        out = model_path / "onnx"
    else:
        raise ValueError("give --out DIR (the model is a file, not a run directory)")
    loaded = load_inference_model(
        model_path, args.variant, args.checkpoint, "cpu", allow_base_mismatch=args.allow_base_mismatch
    )
    info = export_onnx(loaded, out, overwrite=args.overwrite)
    check = info["check"]
    print(
        f"exported {model_path} to {out} (encoder.onnx, decoder.onnx, salt_seg_onnx.json): image size "
        f"{info['image_size']}, {info['num_classes']} class token(s), full-resolution branch "
        f"{'yes' if info['hires'] else 'no'}"
    )
    print(
        f"checked on ONNX Runtime against PyTorch: max |logit| diff {check['max_abs_logit']:.2e}, max |probability| "
        f"diff {check['max_abs_probability']:.2e}"
    )
    return 0
