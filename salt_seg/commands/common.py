"""Flags shared by several subcommands, defined once so the CLI stays one consistent surface.

| flag | meaning |
|---|---|
| ``--variant`` | SAM variant name (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``, ``small``) |
| ``--checkpoint`` | a base weights file (Meta SAM / MedSAM ``.pth``, safetensors, training dicts) |
| ``--model`` | a trained run directory or an adapter ``.safetensors`` file |
| ``--device`` | ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` |
| ``--threads`` | CPU threads for torch (default: torch's choice) |
| ``--precision`` | ``fp32``, ``bf16`` or ``fp16`` inference (autocast; ``salt_seg.model.precision``) |
| ``--backend`` | ``torch`` or ``onnx`` (ONNX Runtime on an ``export-onnx`` folder given as ``--model``) |
| ``--set key=value`` | override an experiment config key (repeatable) |
"""

from __future__ import annotations

import argparse

VARIANT_NAMES = (
    "vit_b",
    "vit_l",
    "vit_h",
    "tiny",
    "small",
)  # kept in sync with salt_seg.model.variants (tested)


def add_base_model_flags(parser: argparse.ArgumentParser, *, variant_default: str | None = None) -> None:
    parser.add_argument(
        "--variant", default=variant_default, choices=VARIANT_NAMES, help="SAM variant (architecture) name"
    )
    parser.add_argument("--checkpoint", default=None, help="base weights file (.pth or .safetensors)")


def add_trained_model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="trained run directory or adapter .safetensors file")


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="inference precision (default fp32): bf16/fp16 autocast on CUDA; on a CPU bf16 only (faster where the "
        "CPU has AVX512-BF16 or AMX, else a warning that it is emulated), fp16 is refused there",
    )


def add_backend_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default) or onnx: ONNX Runtime on the CPU with the folder `salt-seg export-onnx` wrote "
        "(--model EXPORT_DIR, or a run directory holding onnx/); fp32 only",
    )


def check_backend(args: argparse.Namespace) -> None:
    """The ``--backend onnx`` rules, shared by every command that takes the flag (one-line ``ValueError``)."""
    if getattr(args, "backend", "torch") != "onnx":
        return
    if args.model is None:
        raise ValueError("--backend onnx needs --model: a folder written by `salt-seg export-onnx`")
    if getattr(args, "precision", "fp32") != "fp32":
        raise ValueError(f"--precision {args.precision}: the onnx backend runs fp32; use --backend torch")
    if getattr(args, "checkpoint", None) is not None or getattr(args, "variant", None) is not None:
        raise ValueError(
            "--backend onnx: the exported folder holds the merged weights; drop --checkpoint/--variant"
        )


def resolve_backend_device(backend: str, name: str = "auto", threads: int | None = None):  # -> torch.device
    """:func:`resolve_device` for ``--backend``: ONNX Runtime runs on the CPU, so there ``auto`` is the CPU and
    another device is refused (one-line ``ValueError``)."""
    if backend != "onnx":
        return resolve_device(name, threads)
    device = resolve_device("cpu" if name == "auto" else name, threads)
    if device.type != "cpu":
        raise ValueError(f"--backend onnx runs on the CPU (ONNX Runtime's CPU provider), not {device}")
    return device


def add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def resolve_device(name: str = "auto", threads: int | None = None):  # -> torch.device
    """Turn ``--device``/``--threads`` into a torch device (imports torch)."""
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device
