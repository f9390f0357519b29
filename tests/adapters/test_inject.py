"""Injection: structural freezing, recorded trainable set, device moves, helpers."""

from __future__ import annotations

import torch

from salt_seg.adapters import (
    AdapterConfig,
    adapter_layers,
    adapter_regularization,
    base_state_dict,
    declared_parameters,
    get_record,
    inject_adapters,
    trainable_parameters,
)
from tests.adapters.conftest import make_tiny


def test_freezing_is_structural() -> None:
    model = make_tiny()
    original = set(model.state_dict())
    inject_adapters(model, AdapterConfig(name="salt"), progress=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    record = get_record(model)
    assert trainable == set(record.trainable)
    declared = {n for group in declared_parameters(model, record.config).values() for n in group}
    adapter = {n for n in trainable if n not in original}
    assert trainable == declared | adapter
    assert {n.rsplit(".", 1)[-1] for n in adapter} == {"alpha", "beta", "X", "Y"}
    assert "image_encoder.pos_embed" in declared and "class_tokens.weight" in declared
    assert sum(1 for n in declared if "norm" in n or "neck.1" in n or "neck.3" in n) == 4 * 4 + 4
    assert not any(n.startswith(("mask_decoder.", "prompt_encoder.")) for n in trainable)
    assert set(base_state_dict(model)) == original
    assert [p for p in trainable_parameters(model)] == [p for _, p in trainable_parameters(model, named=True)]


def test_buffers_follow_the_model_and_are_not_persistent() -> None:
    model = make_tiny()
    inject_adapters(model, AdapterConfig(name="salt"), progress=False)
    model.to(torch.float64)
    layer = next(iter(adapter_layers(model).values()))
    assert layer.Ut.dtype == torch.float64 and layer.alpha.dtype == torch.float64
    assert not any(k.endswith((".Ut", ".Vh", ".S")) for k in model.state_dict())
    x = torch.randn(3, layer.fan_in, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


def test_regularization_sums_layers() -> None:
    model = make_tiny()
    inject_adapters(model, AdapterConfig(name="salt"), progress=False)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.beta.fill_(0.1)
    total = adapter_regularization(model)
    assert (
        abs(total.item() - sum(layer.regularization().item() for layer in adapter_layers(model).values()))
        < 1e-5
    )
    assert total.item() > 0.1
    empty = make_tiny()
    inject_adapters(empty, AdapterConfig(name="none"), progress=False)
    assert adapter_regularization(empty).item() == 0.0
