"""Thin SVD of frozen weights in fp32, with an on-disk cache and rank resolution.

Decomposing the 48 encoder linears of ``vit_b`` takes tens of seconds on a small CPU, so factors are cached under
``$SALT_SEG_CACHE/svd`` (default ``~/.cache/salt_seg/svd``; ``SALT_SEG_CACHE=off`` disables the cache), one
safetensors file per layer. The key is the base checkpoint's canonical hash + the layer name + the weight shape;
without a base hash it is a SHA-256 of the weight's own bytes. Every cache hit is checked against the live weight
with one random matrix-vector product, so a stale or mislabelled entry is recomputed, never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from salt_seg.io import atomic_write_bytes

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: relative error of the probe ``W v`` vs ``U diag(S) Vh v`` above which a cached entry is rejected
PROBE_TOLERANCE = 1e-3


@dataclass
class SVDFactors:
    """Thin SVD ``W = U diag(S) Vh`` of a weight viewed as a matrix.

    Attributes:
        U: ``out x k`` left singular vectors (fp32, orthonormal columns).
        S: ``k`` singular values, descending (fp32).
        Vh: ``k x in`` right singular vectors as rows (fp32); ``in = ci*kh*kw`` for a conv.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.S.shape[0])


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """View a Linear (``out x in``) or Conv2d (``co x ci x kh x kw``) weight as the ``out x fan_in`` matrix."""
    return weight.reshape(weight.shape[0], -1)


def compute_svd(weight: torch.Tensor) -> SVDFactors:
    """Thin SVD of a weight in fp32 on the weight's device.

    Args:
        weight: ``out x in`` or ``co x ci x kh x kw`` tensor of any float dtype.

    Returns:
        fp32 factors on the weight's device.
    """
    w = weight_matrix(weight.detach()).float()
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    return SVDFactors(U.contiguous(), S.contiguous(), Vh.contiguous())


def default_cache_dir() -> Path | None:
    """``$SALT_SEG_CACHE/svd`` or ``~/.cache/salt_seg/svd``; ``None`` when ``SALT_SEG_CACHE`` is ``off``/``0``/``''``."""
    env = os.environ.get("SALT_SEG_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none", "false"):
            return None
        return Path(env).expanduser() / "svd"
    return Path.home() / ".cache" / "salt_seg" / "svd"


def cache_key(layer_name: str, weight: torch.Tensor, base_hash: str | None) -> str:
    """Cache file stem for one layer (see the module docstring)."""
    h = hashlib.sha256()
    h.update(f"salt_seg-svd-v{CACHE_FORMAT}|{layer_name}|{tuple(weight.shape)}|".encode())
    if base_hash:
        h.update(b"base:" + base_hash.encode())
    else:
        w = weight.detach().float().contiguous().cpu()
        h.update(b"bytes:" + w.numpy().tobytes())
    return h.hexdigest()[:40]


def _probe_ok(weight: torch.Tensor, f: SVDFactors) -> bool:
    """One random mat-vec comparing the factors against the live weight."""
    w = weight_matrix(weight.detach()).float()
    gen = torch.Generator(device="cpu").manual_seed(1234)
    v = torch.randn(w.shape[1], generator=gen).to(w.device)
    ref = w @ v
    approx = f.U.to(w.device) @ (f.S.to(w.device) * (f.Vh.to(w.device) @ v))
    denom = float(ref.norm()) or 1.0
    return float((ref - approx).norm()) / denom < PROBE_TOLERANCE


def _load_cached(path: Path, weight: torch.Tensor) -> SVDFactors | None:

    try:
        t = load_file(str(path))
        f = SVDFactors(t["U"], t["S"], t["Vh"])
    except Exception as exc:  # a truncated or foreign file: recompute
        logger.warning("ignoring unreadable SVD cache entry %s (%s)", path, exc)
        return None
    m = weight_matrix(weight)
    if f.U.shape[0] != m.shape[0] or f.Vh.shape[1] != m.shape[1] or not _probe_ok(weight, f):
        logger.warning("SVD cache entry %s does not match the weight it is keyed for; recomputing", path)
        return None
    device = weight.device
    return SVDFactors(f.U.to(device), f.S.to(device), f.Vh.to(device))


def _store(path: Path, f: SVDFactors) -> None:

    try:
        atomic_write_bytes(path, save({"U": f.U.cpu(), "S": f.S.cpu(), "Vh": f.Vh.cpu()}))
    except OSError as exc:  # a read-only cache is not fatal
        logger.warning("could not write SVD cache entry %s (%s)", path, exc)


def decompose_layers(
    weights: Mapping[str, torch.Tensor],
    *,
    base_hash: str | None = None,
    cache_dir: str | Path | None | bool = True,
    progress: bool = True,
) -> dict[str, SVDFactors]:
    """SVD factors for several layers, from the cache where possible.

    Args:
        weights: layer name -> weight (``out x in`` or ``co x ci x kh x kw``).
        base_hash: canonical hash of the base checkpoint the weights come from (keys the cache); ``None`` keys by
            each weight's bytes instead.
        cache_dir: a directory, ``True`` for :func:`default_cache_dir`, or ``False``/``None`` for no cache.
        progress: show a tqdm bar (on a terminal) while decomposing.

    Returns:
        layer name -> fp32 factors on the weight's device.
    """

    root: Path | None
    if cache_dir is True:
        root = default_cache_dir()
    elif cache_dir in (False, None):
        root = None
    else:
        root = Path(cache_dir)  # type: ignore[arg-type]
    out: dict[str, SVDFactors] = {}
    todo: list[str] = []
    paths: dict[str, Path] = {}
    for name, w in weights.items():
        cached = None
        if root is not None:
            paths[name] = root / f"{cache_key(name, w, base_hash)}.safetensors"
            if paths[name].exists():
                cached = _load_cached(paths[name], w)
        if cached is not None:
            out[name] = cached
        else:
            todo.append(name)
    if len(todo) < len(weights):
        logger.info(
            "SVD factors of %d/%d layers loaded from %s", len(weights) - len(todo), len(weights), root
        )
    bar = tqdm(todo, desc="SVD of frozen weights", unit="layer", disable=None if progress else True)
    threads = torch.get_num_threads()
    try:
        # LAPACK's SVD of a few-hundred-wide matrix gains little from threads, and on a busy machine spinning
        # OpenMP threads make it several times slower (measured 4-5x on 2 shared cores): one thread on the CPU
        if any(w.device.type == "cpu" for w in weights.values()):
            torch.set_num_threads(1)
        for name in bar:
            w = weights[name]
            f = compute_svd(w)
            out[name] = f
            if name in paths:
                _store(paths[name], f)
    finally:
        torch.set_num_threads(threads)
    return {name: out[name] for name in weights}


def resolve_rank(spec: int | Mapping[str, float], S: torch.Tensor | None, k: int, where: str = "rank") -> int:
    """Turn a rank spec into an integer for a layer with ``k`` singular values.

    Args:
        spec: int, ``{"fraction": f}`` (``round(f*k)`` clamped to ``[1, k]``) or ``{"energy": e}``.
        S: the layer's singular values (descending); needed only for ``energy``.
        k: ``min(out, in)``.
        where: the layer name, for the error message.

    Raises:
        ValueError: an integer rank above ``k``, or an energy rank without singular values.
    """
    if isinstance(spec, int):
        if spec > k:
            raise ValueError(f"rank {spec} for {where} exceeds its k = min(out, in) = {k}")
        return spec
    ((kind, amount),) = spec.items()
    if kind == "fraction":
        return max(1, min(k, int(round(amount * k))))
    if S is None:
        raise ValueError(f"{where}: an energy rank needs the layer's singular values (the real weights)")
    energy = S.double().pow(2)
    total = float(energy.sum())
    if total <= 0.0:
        return 1
    share = torch.cumsum(energy, 0) / total
    r = int(torch.searchsorted(share, torch.tensor(amount - 1e-12, dtype=share.dtype)).item()) + 1
    return max(1, min(k, r))
