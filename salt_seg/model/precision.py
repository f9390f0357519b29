"""Reduced-precision inference: ``fp32`` (default), ``bf16`` and ``fp16`` under :func:`torch.autocast`.

The weights stay float32; autocast runs the matrix products and convolutions of the encoder and the decoder in
the lower precision, and every caller casts the mask logits back to float32 before the sigmoid and the
threshold (:func:`to_float`), so probabilities, stability scores and label maps are computed as before.

Where each precision runs:

* **CUDA**: ``bf16`` (cards that support it, Ampere and newer) and ``fp16``.
* **CPU**: ``bf16`` only. On this project's CPU (AMD EPYC with AVX512-BF16) the tiny and small image encoders
  run 1.5-1.6x faster in bf16 than in fp32 and ViT-B at 1024 px 1.7x, with half the activation memory
  (``bench/bench_precision.py``, BENCHMARKS.md); on a CPU without native bf16 (no AVX512-BF16 or AMX) oneDNN
  emulates it and it is usually *slower*, so :func:`check_precision` warns. ``fp16`` is refused on the CPU:
  without AVX512-FP16 it is emulated, 4x slower than fp32 on the tiny encoder here, and it saves no memory that
  bf16 does not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # pragma: no cover - a probe that cannot answer says no
            continue
    return False


def check_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Validate ``precision`` for ``device``; returns it.

    Raises:
        ValueError: an unknown precision, ``fp16`` on the CPU, ``bf16`` on a CUDA card without bf16, or a
            reduced precision on another device type (one-line messages for the CLI).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return precision
    dev = torch.device(device)
    if dev.type == "cpu":
        if precision == "fp16":
            raise ValueError(
                "--precision fp16 needs a CUDA device: on the CPU half precision is emulated (4x slower than fp32); "
                "use --precision bf16 (or fp32)"
            )
        if not cpu_has_native_bf16():
            log.warning(
                "this CPU has no native bf16 (AVX512-BF16/AMX): --precision bf16 is emulated and probably slower "
                "than fp32"
            )
        return precision
    if dev.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16: this CUDA device does not support bf16; use fp16")
        return precision
    raise ValueError(f"--precision {precision}: reduced precision runs on cpu and cuda, not {dev.type}")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast to ``precision`` on ``device``'s type (nothing for ``fp32``)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision]):
        yield


def to_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 (logits and scores leave the model in its compute precision)."""
    return t if t.dtype == torch.float32 else t.float()


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters live (CPU for a model without parameters)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")
