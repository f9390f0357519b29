"""Adapter files: contents, metadata, base-hash checks."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from salt_seg.adapters import (
    AdapterConfig,
    get_record,
    inject_adapters,
    load_adapter,
    model_base_hash,
    read_adapter_metadata,
    save_adapter,
    trainable_parameters,
)
from salt_seg.configio import from_dict
from salt_seg.model.checkpoint import state_dict_hash
from salt_seg.preprocessing import Preprocessing
from tests.adapters.conftest import make_tiny


def _saved(tmp_path, config: AdapterConfig | None = None, **kw):
    model = make_tiny()
    base_hash = model_base_hash(model)
    config = config or AdapterConfig(name="salt")
    inject_adapters(model, config, progress=False)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.add_(0.01)
    path = save_adapter(
        tmp_path / "a.safetensors", model, config, base_variant="tiny", base_hash=base_hash, **kw
    )
    return model, path, base_hash


def test_file_holds_exactly_the_trainable_tensors_and_the_metadata(tmp_path) -> None:
    pre = Preprocessing(image_size=256, classes={1: "vessel", 2: "organ"})
    model, path, base_hash = _saved(
        tmp_path, preprocessing=pre, class_names={1: "vessel", 2: "organ"}, extra={"step": 7}
    )
    tensors = load_file(str(path))
    record = get_record(model)
    assert sorted(tensors) == sorted(record.trainable)
    assert not any(
        k.endswith((".Ut", ".Vh", ".S")) or ".base_layer." in k for k in tensors
    )  # no frozen tensors
    params = dict(model.named_parameters())
    assert all(torch.equal(tensors[k], params[k].detach()) for k in tensors)
    meta = read_adapter_metadata(path)
    assert meta["format_version"] == 1 and meta["base_variant"] == "tiny" and meta["base_hash"] == base_hash
    assert from_dict(AdapterConfig, meta["config"]) == record.config
    assert from_dict(Preprocessing, meta["preprocessing"]) == pre
    assert meta["class_names"] == {"1": "vessel", "2": "organ"} and meta["extra"] == {"step": 7}
    n = sum(t.numel() for t in tensors.values())
    assert meta["num_parameters"] == n
    assert 4 * n < path.stat().st_size < 4 * n + 65536  # the file is the fp32 tensors plus a small header


def test_base_hash_is_the_canonical_state_dict_hash() -> None:
    model = make_tiny()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("class_tokens.")}
    before = model_base_hash(model)
    assert before == state_dict_hash(sd)
    inject_adapters(model, AdapterConfig(name="salt"), progress=False)
    assert model_base_hash(model) == before  # wrapped keys map back to the base's


def test_mismatching_base_is_refused_unless_allowed(tmp_path, caplog) -> None:
    _, path, _ = _saved(tmp_path)
    other = make_tiny()
    with torch.no_grad():
        other.image_encoder.blocks[0].attn.qkv.weight.add_(1e-3)
    with pytest.raises(ValueError, match="trained on base weights .* but the base model here is"):
        load_adapter(path, other, progress=False)
    assert get_record(other) is None  # nothing was injected
    with pytest.raises(ValueError, match="allow_base_mismatch"):
        load_adapter(path, make_tiny(), expected_base_hash="0" * 64, progress=False)
    with caplog.at_level(logging.WARNING):
        meta = load_adapter(path, other, allow_base_mismatch=True, progress=False)
    assert "loading anyway" in caplog.text and meta["base_variant"] == "tiny"
    assert get_record(other) is not None


def test_variant_and_config_mismatches_are_refused(tmp_path) -> None:
    _, path, base_hash = _saved(tmp_path)
    small = make_tiny()
    small.variant = "small"
    with pytest.raises(ValueError, match="for SAM variant 'tiny', the model is 'small'"):
        load_adapter(path, small, progress=False)
    lora = make_tiny()
    inject_adapters(lora, AdapterConfig(name="lora"), progress=False)
    with pytest.raises(ValueError, match="different adapter config"):
        load_adapter(path, lora, expected_base_hash=base_hash, progress=False)


def test_resume_into_an_injected_model(tmp_path) -> None:
    trained, path, base_hash = _saved(tmp_path)
    model = make_tiny()
    inject_adapters(model, AdapterConfig(name="salt"), progress=False)
    load_adapter(path, model, expected_base_hash=base_hash)
    mine = dict(model.named_parameters())
    for name, p in trained.named_parameters():
        if p.requires_grad:
            assert torch.equal(mine[name], p)


def test_foreign_and_future_files_are_refused(tmp_path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a salt_seg adapter file"):
        read_adapter_metadata(plain)
    future = tmp_path / "future.safetensors"
    save_file(
        {"w": torch.zeros(2)}, str(future), metadata={"format": "salt_seg.adapter", "format_version": "99"}
    )
    with pytest.raises(ValueError, match="newer"):
        read_adapter_metadata(future)
    with pytest.raises(FileNotFoundError):
        read_adapter_metadata(tmp_path / "missing.safetensors")


def test_save_refuses_a_different_config_and_bad_metadata(tmp_path) -> None:
    model, _, base_hash = _saved(tmp_path)
    with pytest.raises(ValueError, match="differs"):
        save_adapter(
            tmp_path / "b.safetensors",
            model,
            AdapterConfig(name="salt", r_lora=8),
            base_variant="tiny",
            base_hash=base_hash,
        )
    with pytest.raises(ValueError, match="JSON"):
        save_adapter(
            tmp_path / "c.safetensors", model, base_variant="tiny", base_hash=base_hash, extra={"x": object()}
        )
    assert (
        json.loads(json.dumps(read_adapter_metadata(tmp_path / "a.safetensors")["config"]))["name"] == "salt"
    )


def test_class_tokens_are_created_to_fit_the_file(tmp_path) -> None:
    trained, path, base_hash = _saved(tmp_path)
    bare = make_tiny(num_classes=0)
    load_adapter(path, bare, expected_base_hash=base_hash, progress=False)
    assert bare.num_classes == 2
    assert torch.equal(bare.class_tokens.weight, trained.class_tokens.weight)
    injected = make_tiny(num_classes=3)
    inject_adapters(injected, AdapterConfig(name="salt"), progress=False)
    with pytest.raises(ValueError, match="prompt tokens for 2 classes, the model 3"):
        load_adapter(path, injected, expected_base_hash=base_hash, progress=False)
