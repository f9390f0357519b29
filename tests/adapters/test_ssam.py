"""S-SAM: scale and shift of every singular value."""

from __future__ import annotations

import torch
from torch import nn

from salt_seg.adapters import SSamLayer, compute_svd


def test_every_singular_value_scaled_and_shifted() -> None:
    torch.manual_seed(0)
    base = nn.Linear(24, 30)
    base.requires_grad_(False)
    layer = SSamLayer(base, compute_svd(base.weight))
    assert layer.rank == 24 and layer.X is None
    assert sum(p.numel() for p in layer.adapter_parameters()) == SSamLayer.count(30, 24) == 48
    with torch.no_grad():
        layer.alpha.fill_(2.0)
    w = base.weight.detach()
    assert (w + layer.get_delta_weight() - 2 * w).abs().max().item() < 1e-5  # W' = U (2Σ) Vᵀ = 2W
