"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` of the peak."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float = 0.05,
    time_fraction: Callable[[], float] | None = None,
):
    """A ``LambdaLR`` whose factor rises linearly for ``warmup_steps`` and then follows a half cosine.

    ``time_fraction`` (the share of a wall-clock budget used so far) makes the cosine follow whichever is further
    along, the steps or the clock, so that a run cut short by its budget still ends at the bottom of the decay.
    """

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if time_fraction is not None:
            progress = min(1.0, max(progress, time_fraction()))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
