"""Segmentation losses on logits (MONAI), one registry.

Both losses take mask *logits* and binary targets; the sigmoid happens inside the loss exactly once (the
reference SALT code applied a sigmoid before a focal loss that applies its own: a double sigmoid).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DiceCELoss, DiceFocalLoss
from torch import nn


def _dice_focal() -> nn.Module:

    return DiceFocalLoss(sigmoid=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5, lambda_focal=1.0)


def _dice_ce() -> nn.Module:

    return DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)


LOSSES: dict[str, Callable[[], nn.Module]] = {"dice_focal": _dice_focal, "dice_ce": _dice_ce}


def build_loss(name: str) -> nn.Module:
    """A loss ``f(logits P x 1 x H x W, target P x 1 x H x W in {0, 1}) -> scalar``.

    Raises:
        ValueError: unknown name (lists the valid ones).
    """
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}") from None


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per prompt of thresholded logits vs binary target (``P``); both empty counts as 1."""
    pred = (logits > 0).flatten(1).float()
    tgt = target.flatten(1).float()
    inter = (pred * tgt).sum(1)
    denom = pred.sum(1) + tgt.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-9), torch.ones_like(denom))


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU per prompt of thresholded logits vs binary target (``P``); both empty counts as 1.

    The regression target of SAM's IoU-prediction head.
    """
    pred = (logits > 0).flatten(1).float()
    tgt = target.flatten(1).float()
    inter = (pred * tgt).sum(1)
    union = pred.sum(1) + tgt.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-9), torch.ones_like(union))
