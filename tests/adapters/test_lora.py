"""LoRA, including SAMed's q/v-only setting on the fused qkv."""

from __future__ import annotations

import torch
from torch import nn

from salt_seg.adapters import AdapterConfig, LoraLayer, adapter_layers, inject_adapters
from tests.adapters.conftest import make_tiny


def test_qv_only_touches_q_and_v_rows_only() -> None:
    base = nn.Linear(16, 48)
    layer = LoraLayer(base, r_lora=3, qv_only=True)
    assert (
        sum(p.numel() for p in layer.adapter_parameters())
        == 2 * 3 * (16 + 16)
        == LoraLayer.count(48, 16, 3, True)
    )
    with torch.no_grad():
        layer.lora_B_q.normal_()
        layer.lora_B_v.normal_()
    delta = layer.get_delta_weight()
    assert delta[:16].abs().min() >= 0 and delta[:16].abs().max() > 0  # q
    assert torch.count_nonzero(delta[16:32]) == 0  # k untouched
    assert delta[32:].abs().max() > 0  # v
    expected_v = layer.lora_B_v @ layer.lora_A[3:]
    assert torch.allclose(delta[32:], expected_v, atol=1e-6)


def test_scaling_and_count() -> None:
    base = nn.Linear(10, 6)
    layer = LoraLayer(base, r_lora=2, lora_alpha=8.0)
    assert layer.scaling == 4.0
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    assert torch.allclose(layer.get_delta_weight(), 4.0 * layer.lora_B @ layer.lora_A)
    assert LoraLayer.count(6, 10, 2) == 32


def test_samed_setting_on_tiny() -> None:
    model = make_tiny()
    names = inject_adapters(
        model,
        AdapterConfig(name="lora", lora_qv_only=True, targets=["image_encoder.blocks.*.attn.qkv"]),
        progress=False,
    )
    assert names == [f"image_encoder.blocks.{i}.attn.qkv" for i in range(4)]
    layer = adapter_layers(model)[names[0]]
    assert layer.qv_only and sum(p.numel() for p in layer.adapter_parameters()) == 2 * 4 * (192 + 192)
