"""``salt-seg predict``: segment NIfTI / DICOM volumes with a trained adapter and export label maps.

Thin on purpose: parse, validate, load the model, hand the cases to :mod:`salt_seg.inference.batch`, print the
table. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse

from salt_seg.commands.common import (
    add_backend_flag,
    add_base_model_flags,
    add_precision_flag,
    add_runtime_flags,
    add_trained_model_flag,
)

HELP = "segment volumes (NIfTI, DICOM folder/zip, or a folder of cases) and export NIfTI label maps"
DESCRIPTION = (
    "Segment every slice of each input volume with a trained adapter (merged into the base weights) and write a "
    "NIfTI label map in exactly the input's geometry, a JSON sidecar with label names, structure volumes (mL) and "
    "the slices each structure covers, a 3D Slicer colour table and an ITK-SNAP label file (nnU-Net's "
    "case_0000.nii.gz writes case.nii.gz). Modes: auto (the model's learned "
    "class tokens), prompts (boxes/points from a JSON prompt file, voxel or world RAS mm coordinates) and propagate "
    "(from a prompt on one slice through the neighbouring slices until the predicted IoU or the mask area drops). "
    "Without --model, a base --checkpoint (e.g. builtin) segments from prompts alone. A failing case is reported "
    "and skipped; the exit status is 1 when any case failed. Under torchrun the cases are split across ranks."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trained_model_flag(parser)
    add_base_model_flags(parser)
    parser.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="a NIfTI/NRRD/MHA file, a DICOM series folder or zip, or a folder of such cases",
    )
    parser.add_argument(
        "--out",
        "--output",
        dest="output",
        required=True,
        metavar="DIR",
        help="output folder (created); --output is the old name, kept for one release",
    )
    parser.add_argument(
        "--prompts",
        metavar="FILE|DIR",
        help="JSON prompt file (one case) or a folder of <case>.json prompt files",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "prompts", "propagate"),
        default=None,
        help="auto (class tokens; default without --prompts), prompts (default with --prompts) or propagate",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (x, y, z, class; uint8 scaled by 1/255)",
    )
    parser.add_argument(
        "--force",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="replace existing outputs (--overwrite is the old name, kept for one release)",
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="slices per encoder batch (8)")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="F",
        help="auto mode: keep a class token's slice mask only at this confidence or above (default 0 = keep all)",
    )
    parser.add_argument(
        "--iou-threshold",
        type=float,
        default=None,
        metavar="F",
        help="propagate mode: stop when the predicted IoU falls below F (default 0 = off: the predicted IoU means "
        "something only where SAM's IoU head was trained, i.e. Meta's SAM or a run with adapter.train_mask_decoder)",
    )
    parser.add_argument(
        "--stability-threshold",
        type=float,
        default=None,
        metavar="F",
        help="propagate mode: stop when the mask's stability score falls below F (default 0.6; 0 disables)",
    )
    parser.add_argument(
        "--min-area-ratio",
        type=float,
        default=None,
        metavar="F",
        help="propagate mode: stop when the mask shrinks below F x the previous slice's area (default 0.5)",
    )
    parser.add_argument(
        "--confidence",
        choices=("stability", "iou"),
        default=None,
        help="per-slice confidence for --score-threshold and the reported mean_confidence: SAM's stability score "
        "(default) or the predicted IoU (only for models with a trained IoU head)",
    )
    parser.add_argument(
        "--format",
        choices=("nifti", "dicom-seg", "rtstruct"),
        default="nifti",
        help="nifti (default): NIfTI label maps; dicom-seg: also <case>.seg.dcm, a DICOM Segmentation of the source "
        "series (one named segment per class, referencing its images); rtstruct: also <case>.rtstruct.dcm, an RT "
        "Structure Set (contours; needs the rtstruct extra). DICOM inputs only",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="test-time mirroring: average each slice's probabilities with those of its left-right mirror image "
        "(nnU-Net's default; twice the inference time)",
    )
    parser.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="load the adapter even if the base weights differ from the ones it was trained on",
    )
    parser.add_argument(
        "--library",
        default=None,
        metavar="DIR",
        help="adapter library that --model NAME is looked up in when NAME is not a path (default "
        "$SALT_SEG_LIBRARY or ~/.salt_seg/library; see salt-seg library)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_backend_flag(parser)
    add_precision_flag(parser)
    add_runtime_flags(parser)


def _settings(args: argparse.Namespace):  # -> InferenceSettings
    from dataclasses import replace

    from salt_seg.inference import InferenceSettings

    s = InferenceSettings()
    prop = s.propagation
    if args.iou_threshold is not None:
        prop = replace(prop, iou_threshold=args.iou_threshold)
    if args.stability_threshold is not None:
        prop = replace(prop, stability_threshold=args.stability_threshold)
    if args.min_area_ratio is not None:
        prop = replace(prop, min_area_ratio=args.min_area_ratio)
    if args.score_threshold is not None:
        s = replace(s, score_threshold=args.score_threshold)
    if args.confidence is not None:
        s = replace(s, confidence=args.confidence)
    return replace(s, propagation=prop, mirror=bool(args.mirror))


def _table(report) -> str:  # noqa: ANN001 - BatchReport
    lines = []
    for s in report.ok:
        parts = [f"{v['name']} {v['volume_ml']:.2f} mL ({v['voxels']} vox)" for v in s["structures"].values()]
        lines.append(f"ok      {s['case']}: {', '.join(parts) or 'no classes'}")
    for f in report.failed:
        lines.append(f"FAILED  {f['case']}: {f['error']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from salt_seg.commands.common import check_backend, resolve_backend_device
    from salt_seg.inference import PredictOptions, find_cases, load_inference_model, predict_cases
    from salt_seg.inference.batch import attach_prompts

    if args.model is None and args.checkpoint is None:
        raise ValueError(
            "give --model (a trained run directory or adapter file) or a base --checkpoint (e.g. builtin)"
        )
    mode = args.mode or ("prompts" if args.prompts else "auto")
    if args.model is None and mode == "auto":
        raise ValueError(
            "a base checkpoint without --model has no class tokens: give --prompts (prompts/propagate)"
        )
    if mode == "auto" and args.prompts:
        raise ValueError("--prompts is used by --mode prompts or propagate, not auto")
    if mode != "auto" and not args.prompts:
        raise ValueError(f"--mode {mode} needs --prompts FILE|DIR")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out must be a folder")
    check_backend(args)
    options = PredictOptions(
        mode=mode,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        settings=_settings(args),
        progress=not args.no_progress,
        format=args.format,
        precision=args.precision,
    )
    cases = find_cases(args.input, exclude=out)
    attach_prompts(cases, args.prompts)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_backend_device(args.backend, args.device, args.threads)
    if world > 1 and device.type == "cuda" and device.index is None:
        import torch

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if args.backend == "torch":
        from salt_seg.model.precision import check_precision

        check_precision(args.precision, device)
    if args.backend == "onnx":
        from salt_seg.inference.onnx_model import load_onnx_model

        loaded = load_onnx_model(args.model, threads=args.threads)
    elif args.model is not None:
        from salt_seg.library import resolve_model

        model_path, checkpoint = resolve_model(args.model, args.checkpoint, args.library)
        loaded = load_inference_model(
            model_path, args.variant, checkpoint, device, allow_base_mismatch=args.allow_base_mismatch
        )
    else:
        from salt_seg.inference import LoadedModel, load_base_for_prompts

        base, record = load_base_for_prompts(args.checkpoint, args.variant, device, intensity="minmax")
        loaded = LoadedModel(base, record, dict(record.classes), {"base_checkpoint": args.checkpoint})
    if world > 1:
        from salt_seg.training.distributed import all_gather_objects, barrier, cleanup, init_distributed

        info = init_distributed(device)
        try:
            report = predict_cases(
                loaded,
                cases,
                out,
                options,
                rank=info.rank,
                world_size=info.world_size,
                gather=lambda obj: all_gather_objects(obj, info),
                barrier=lambda: barrier(info),
            )
        finally:
            cleanup(info)
        if info.rank != 0:
            return report.exit_code
    else:
        report = predict_cases(loaded, cases, out, options)
    print(_table(report))
    where = f"summary: {report.summary_path}" if report.summary_path else f"nothing written to {out}"
    print(f"{len(report.ok)} ok, {len(report.failed)} failed; {where}")
    return report.exit_code
