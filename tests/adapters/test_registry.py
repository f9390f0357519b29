"""The generic contract, run over every registered adapter on the `tiny` variant (issue 3, acceptance 1-3)."""

from __future__ import annotations

import pytest
import torch

from salt_seg.adapters import (
    ADAPTERS,
    AdapterConfig,
    adapter_layers,
    adapter_regularization,
    base_state_dict,
    get_record,
    inject_adapters,
    load_adapter,
    merge_adapters,
    model_base_hash,
    save_adapter,
    trainable_parameters,
    unmerge_adapters,
)
from tests.adapters.conftest import ADAPTER_CASES, make_inputs, make_tiny

CASES = list(ADAPTER_CASES)
#: wrapped layers on `tiny`: 4 blocks x 4 linears + 2 neck convs
EXPECTED_WRAPPED = {"lora_qv": 4, "full": 0, "none": 0}


def test_table_covers_every_registered_adapter() -> None:
    assert {c["name"] for c in ADAPTER_CASES.values()} == set(ADAPTERS)


@pytest.mark.parametrize("case", CASES)
def test_identity_init_outputs_equal_base(case: str) -> None:
    images, prompts = make_inputs()
    model = make_tiny().eval()
    with torch.no_grad():
        base_logits, base_iou = model(images, prompts)
    names = inject_adapters(model, AdapterConfig(**ADAPTER_CASES[case]), progress=False)
    assert len(names) == EXPECTED_WRAPPED.get(case, 18)
    with torch.no_grad():
        logits, iou = model(images, prompts)
    assert (logits - base_logits).abs().max().item() <= 1e-5
    assert (iou - base_iou).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_three_steps_change_only_adapter_and_declared_tensors(case: str) -> None:
    images, prompts = make_inputs()
    model = make_tiny()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    config = AdapterConfig(**ADAPTER_CASES[case])
    inject_adapters(model, config, progress=False)
    named = trainable_parameters(model, named=True)
    start = {n: p.detach().clone() for n, p in named}
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        logits, iou = model(images, prompts)
        loss = logits.sigmoid().mean() + iou.mean() + config.reg_weight * adapter_regularization(model)
        loss.backward()
        opt.step()

    declared = set(get_record(model).trainable)
    after = base_state_dict(model)
    assert set(after) == set(original)  # wrapping is invisible in the base's keys
    frozen_changed = [k for k, v in original.items() if k not in declared and not torch.equal(after[k], v)]
    assert frozen_changed == []  # bit-identical base weights
    adapter_names = [n for n in start if n not in original]
    if config.name in ("full", "none"):
        assert adapter_names == []
    else:
        assert adapter_names, "an adapter must add trainable tensors"
    changed = {n for n, p in named if not torch.equal(p.detach(), start[n])}
    assert set(adapter_names) <= changed  # every adapter tensor moved
    assert changed <= declared  # nothing outside the declared set moved
    if config.name == "full":
        assert any(k.startswith("image_encoder.blocks.") for k in changed)
        assert not any(k.startswith(("mask_decoder.", "prompt_encoder.")) for k in changed)
    if config.name == "none":
        assert any(k.startswith("mask_decoder.") for k in changed)
        assert not any(k.startswith("image_encoder.") for k in changed)
    if config.train_pos_embed:
        assert "image_encoder.pos_embed" in changed


@pytest.mark.parametrize("case", CASES)
def test_unmerged_merged_and_reloaded_outputs_agree(case: str, tmp_path) -> None:
    images, prompts = make_inputs()
    model = make_tiny()
    base_hash = model_base_hash(model)
    config = AdapterConfig(**ADAPTER_CASES[case])
    inject_adapters(model, config, progress=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained-looking adapter: every trainable tensor moved
        for p in trainable_parameters(model):
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.eval()
    with torch.no_grad():
        unmerged, _ = model(images, prompts)
        kept = {n: layer.base_layer.weight.clone() for n, layer in adapter_layers(model).items()}
        merge_adapters(model)
        merged, _ = model(images, prompts)
        unmerge_adapters(model)
        for n, layer in adapter_layers(model).items():
            assert (layer.base_layer.weight - kept[n]).abs().max().item() <= 1e-6
    if kept:
        assert (unmerged - make_tiny().eval()(images, prompts)[0]).abs().max().item() > 1e-3  # not a no-op

    path = save_adapter(
        tmp_path / "adapter.safetensors",
        model,
        config,
        base_variant="tiny",
        base_hash=base_hash,
        class_names=["a", "b"],
    )
    fresh = make_tiny().eval()
    meta = load_adapter(path, fresh, progress=False)
    assert meta["base_hash"] == base_hash and meta["config"] == config.to_dict()
    with torch.no_grad():
        merge_adapters(fresh)
        reloaded, _ = fresh(images, prompts)
    assert (merged - unmerged).abs().max().item() <= 1e-4
    assert (reloaded - unmerged).abs().max().item() <= 1e-4
