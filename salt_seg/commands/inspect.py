"""``salt-seg inspect PATH``: say what a checkpoint or adapter file is and whether it loads."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "tell what a checkpoint or adapter file is (variant, wrapper, size, hash) and whether it loads"
DESCRIPTION = (
    "Inspect a SAM/MedSAM checkpoint or a salt_seg adapter file: the SAM variant detected from tensor shapes, "
    "training wrapper or key prefix found, parameter count, content SHA-256, adapter metadata, and whether it "
    "loads - with the fix when it does not."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a .pth / .pt / .safetensors file")
    parser.add_argument(
        "--variant", default=None, help="check loading into this variant instead of the detected one"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")


def _safetensors_metadata(path: str) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors file
        return None


def inspect_file(path: str, variant: str | None = None) -> dict:
    """Describe a file as a JSON-serialisable dict (the library behind the command)."""
    from dataclasses import asdict
    from pathlib import Path

    from salt_seg.model.checkpoint import load_weights, read_checkpoint
    from salt_seg.model.variants import build_model, get_variant

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    meta = _safetensors_metadata(path) if p.suffix == ".safetensors" else None
    if meta and any(k.startswith("salt_seg") or k in ("adapter_config", "base_hash") for k in meta):
        from safetensors.torch import load_file

        tensors = load_file(path)
        out: dict[str, Any] = {"path": path, "kind": "adapter", "metadata": {}}
        for k, v in meta.items():
            try:
                out["metadata"][k] = json.loads(v)
            except (json.JSONDecodeError, TypeError):
                out["metadata"][k] = v
        out["num_tensors"] = len(tensors)
        out["num_parameters"] = int(sum(t.numel() for t in tensors.values()))
        out["loads"] = None
        out["fix"] = (
            "load it with --model together with its base (--variant/--checkpoint) in train/predict/app"
        )
        return out
    sd, info = read_checkpoint(path)
    out = {"kind": "checkpoint", **asdict(info)}
    target = variant or info.variant
    out["checked_variant"] = target
    if target is None:
        out["loads"] = False
        out["fix"] = (
            "no SAM image encoder recognised; is this a SAM/MedSAM checkpoint? pass --variant to check one"
        )
        return out
    get_variant(target)
    try:
        model = build_model(target, image_size=info.image_size if target == info.variant else None)
        load_weights(model, sd, source=path)
        out["loads"] = True
        out["fix"] = None
    except ValueError as exc:
        out["loads"] = False
        out["fix"] = str(exc)
    return out


def run(args: argparse.Namespace) -> int:
    info = inspect_file(args.path, args.variant)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0 if info.get("loads") is not False else 1
    if info["kind"] == "adapter":
        md = info["metadata"]
        print(f"{args.path}: salt_seg adapter file")
        for k, v in md.items():
            text = json.dumps(v) if not isinstance(v, str) else v
            print(f"  {k}: {text[:200]}{'...' if len(text) > 200 else ''}")
        print(f"  trainable tensors: {info['num_tensors']} ({info['num_parameters']:,} parameters)")
        return 0
    print(f"{args.path}: {info['format']} checkpoint")
    print(
        f"  variant:     {info['variant'] or 'not recognised'}"
        + (f" (native input {info['image_size']}px)" if info["image_size"] else "")
    )
    if info["origin"]:
        print(f"  origin:      {info['origin']} (file hash matches the published name)")
    print(f"  wrapper:     {info['wrapper'] or 'none'}; prefix: {info['prefix'] or 'none'}")
    print(
        f"  parameters:  {info['num_parameters']:,} in {info['num_tensors']} tensors"
        + (f"; {info['num_classes']} class tokens" if info["num_classes"] else "")
    )
    print(f"  content sha256: {info['content_hash']}")
    print(f"  file sha256:    {info['file_sha256']}")
    for note in info["notes"]:
        print(f"  note: {note}")
    if info["loads"]:
        print(f"  loads: yes, as --variant {info['checked_variant']}")
        return 0
    print(f"  loads: NO - {info['fix']}")
    return 1
