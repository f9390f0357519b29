"""The wrapper contract: signature, merge/unmerge, safe merge."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from salt_seg.adapters import LoraLayer, SaltLayer, compute_svd


def _salt() -> SaltLayer:
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    base.requires_grad_(False)
    layer = SaltLayer(base, compute_svd(base.weight), rank=6, r_lora=2)
    with torch.no_grad():
        layer.alpha.fill_(1.3)
        layer.X.normal_()
    return layer


def test_forward_keeps_the_linear_signature() -> None:
    layer = _salt()
    x = torch.randn(2, 5, 7, 16)
    assert layer(x).shape == (2, 5, 7, 12)
    assert isinstance(layer.base_layer, nn.Linear) and not layer.base_layer.weight.requires_grad


def test_merge_folds_the_update_and_unmerge_restores() -> None:
    layer = _salt()
    x = torch.randn(9, 16)
    w0 = layer.base_layer.weight.clone()
    y = layer(x)
    layer.merge()
    assert layer.merged and torch.allclose(layer(x), y, atol=1e-5)
    assert torch.allclose(layer(x), layer.base_layer(x))  # merged: the plain layer
    layer.unmerge()
    assert (layer.base_layer.weight - w0).abs().max().item() <= 1e-6
    w1 = layer.base_layer.weight.clone()
    layer.merge(keep_copy=True)
    assert not torch.equal(layer.base_layer.weight, w1)
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, w1)  # bit-exact with a kept copy


def test_safe_merge_refuses_non_finite_weights(caplog) -> None:
    layer = _salt()
    w0 = layer.base_layer.weight.clone()
    with torch.no_grad():
        layer.beta[0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base_layer.weight, w0)
    with caplog.at_level(logging.WARNING):
        layer.unmerge()
    assert "not merged" in caplog.text


def test_conv_base_is_reshaped_and_applied_with_its_geometry() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False)
    base.requires_grad_(False)
    layer = LoraLayer(base, r_lora=2, compute="factored")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(1, 6, 9, 9)
    expected = torch.nn.functional.conv2d(x, base.weight + layer.get_delta_weight(), None, 2, 1)
    assert layer(x).shape == expected.shape == (1, 5, 5, 5)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="groups=1"):
        LoraLayer(nn.Conv2d(4, 4, 3, groups=2), 2)
