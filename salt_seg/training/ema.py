"""A moving average of the trained tensors (Polyak / EMA weights), for ``train.ema_decay``.

Only the tensors the run trains are averaged (the adapter, the decoder parts, class tokens, the branch): the frozen
base never changes. After each optimizer step ``avg <- d * avg + (1 - d) * w`` with ``d = min(decay, (1 + t) /
(10 + t))`` at step ``t`` (the warm-up keeps the first steps from being tied to the initial weights). Validation,
checkpoint adapters and the exported adapter use the average (:meth:`ParamEma.applied`); the optimizer goes on with
the raw tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["ParamEma"]


class ParamEma:
    """The average of ``params`` (name -> parameter), kept beside them.

    Args:
        params: ``(name, parameter)`` pairs: what the optimizer trains.
        decay: the decay ``d`` in ``[0, 1)``.
    """

    def __init__(self, params: list[tuple[str, nn.Parameter]], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.decay = decay
        self.average = [p.detach().clone() for p in self.params]

    def rate(self, step: int) -> float:
        """The decay used after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the tensors after optimizer step ``step`` into the average."""
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.rate(step))

    @contextlib.contextmanager
    def applied(self) -> Iterator[dict[str, torch.Tensor]]:
        """The average in the parameters for the body (the raw tensors are given to it and put back after)."""
        raw = self.raw()
        with torch.no_grad():
            for p, a in zip(self.params, self.average, strict=True):
                p.copy_(a)
        try:
            yield raw
        finally:
            self.load_raw(raw)

    def raw(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the raw trained tensors by name (what ``state.pt`` keeps for ``--resume``)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in zip(self.names, self.params, strict=True)}

    @torch.no_grad()
    def load_raw(self, raw: dict[str, torch.Tensor]) -> None:
        """Put raw trained tensors (from :meth:`raw`) into the parameters."""
        missing = set(self.names) - set(raw)
        if missing:
            raise ValueError(f"the saved raw weights lack {sorted(missing)[:3]} ...")
        for n, p in zip(self.names, self.params, strict=True):
            p.copy_(raw[n].to(p.device))

    @torch.no_grad()
    def restart_from_parameters(self) -> None:
        """The average := the parameters' current values (a resumed run's parameters hold the saved average)."""
        for p, a in zip(self.params, self.average, strict=True):
            a.copy_(p)
