"""Gradient checkpointing for the image encoder's blocks (large variants on small GPUs)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def enable_grad_checkpointing(model) -> None:
    """Recompute each encoder block in backward instead of storing its activations.

    The blocks' forward is wrapped in place (module names gain no prefix: the wrapper replaces ``forward`` only).
    """
    for block in model.image_encoder.blocks:
        if getattr(block, "_salt_checkpointed", False):
            continue
        fwd = block.forward

        def run(x: torch.Tensor, _fwd=fwd, _block=block) -> torch.Tensor:
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_fwd, x, use_reentrant=False)
            return _fwd(x)

        block.forward = run
        block._salt_checkpointed = True
