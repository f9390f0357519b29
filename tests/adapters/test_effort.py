"""Effort: principal components frozen, residual components trainable."""

from __future__ import annotations

import torch
from torch import nn

from salt_seg.adapters import EffortLayer, compute_svd


def _layer(rank: int = 20) -> EffortLayer:
    torch.manual_seed(0)
    base = nn.Linear(24, 30)
    base.requires_grad_(False)
    return EffortLayer(base, compute_svd(base.weight), rank)


def test_trains_the_residual_components() -> None:
    layer = _layer(20)
    m = 24 - 20
    assert (layer.U.shape, layer.sigma.shape, layer.Vh.shape) == ((30, m), (m,), (m, 24))
    assert (
        sum(p.numel() for p in layer.adapter_parameters())
        == EffortLayer.count(30, 24, 20)
        == m * (30 + 24 + 1)
    )
    assert torch.equal(layer.get_delta_weight(), torch.zeros(30, 24))  # exact no-op at init (dense form)
    assert layer.regularization().item() < 1e-6
    with torch.no_grad():
        layer.sigma.mul_(2.0)
    delta = layer.get_delta_weight()
    # only the residual singular values changed: the top-20 subspace is untouched
    assert (layer.U_r.T @ delta).abs().max().item() < 1e-5
    assert delta.abs().max().item() > 1e-3


def test_regulariser_penalises_leaving_orthogonality() -> None:
    layer = _layer(20)
    with torch.no_grad():
        layer.U.add_(0.1 * torch.randn_like(layer.U))
    reg = layer.regularization()
    assert reg.item() > 1e-3
    reg.backward()
    assert layer.U.grad.abs().max().item() > 0
