"""load_inference_model: run directory or adapter file, base from metadata, overrides, merged weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from salt_seg.inference import load_inference_model, resolve_base_checkpoint
from salt_seg.model.sam import InputPrompt


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g)
    prompts = [InputPrompt(box=torch.tensor([5.0, 6.0, 40.0, 50.0])), InputPrompt(class_id=2)]
    with torch.no_grad():
        return model(images, prompts)


def test_run_dir_loads_merged_with_record_and_names(tiny_run: Path) -> None:
    from salt_seg.adapters import adapter_layers

    model, record, names, meta = load_inference_model(tiny_run)
    assert names == {1: "liver", 2: "spleen tumour"}
    assert record.image_size == 64 and record.classes == names and model.image_size == 64
    assert model.num_classes == 2 and model.variant == "tiny"
    assert meta["base_checkpoint"] == str(tiny_run / "base.safetensors")
    assert meta["adapter_path"] == str(tiny_run / "adapter.safetensors") and meta["merged"] is True
    layers = adapter_layers(model)
    assert layers and all(layer.merged for layer in layers.values())
    assert not any(p.requires_grad for p in model.parameters())
    unmerged = load_inference_model(tiny_run / "adapter.safetensors", merge=False).model
    assert not any(layer.merged for layer in adapter_layers(unmerged).values())
    (a, ia), (b, ib) = outputs(model), outputs(unmerged)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ia, ib, atol=1e-4, rtol=1e-4)
    # the adapter changed the model: the bare base gives other logits
    from salt_seg.model.checkpoint import load_base_model

    base, _ = load_base_model("tiny", tiny_run / "base.safetensors", image_size=64, num_classes=2)
    base.class_tokens = model.class_tokens
    assert (outputs(base)[0] - a).abs().max() > 1e-3


def test_adapter_moved_out_of_its_run_needs_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "adapter.safetensors"
    shutil.copy(tiny_run / "adapter.safetensors", moved)
    with pytest.raises(
        FileNotFoundError, match="saved as base.safetensors in the run directory.*--checkpoint"
    ):
        load_inference_model(moved)
    loaded = load_inference_model(moved, checkpoint=str(tiny_run / "base.safetensors"), variant="tiny")
    assert loaded.meta["base_checkpoint"] == str(tiny_run / "base.safetensors")


def test_wrong_base_is_refused_unless_allowed(tiny_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from salt_seg.model import build_model

    other = build_model("tiny", image_size=64)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="trained on base weights"):
        load_inference_model(tiny_run, checkpoint=str(tmp_path / "other.safetensors"))
    loaded = load_inference_model(
        tiny_run, checkpoint=str(tmp_path / "other.safetensors"), allow_base_mismatch=True
    )
    assert loaded.model.variant == "tiny"


def test_base_checkpoint_names_resolve(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = tiny_run / "adapter.safetensors"
    fake = tmp_path / "builtin_small.safetensors"
    fake.write_bytes(b"x")
    monkeypatch.setattr("salt_seg.model.builtin.builtin_checkpoint", lambda name="builtin": fake)
    monkeypatch.setattr("salt_seg.inference.loading.builtin_with_hash", lambda h, first=None: None)
    assert resolve_base_checkpoint(adapter, {"extra": {"base_checkpoint": "builtin"}}, None) == str(fake)
    assert resolve_base_checkpoint(adapter, {"extra": {"base_checkpoint": "base.safetensors"}}, None) == str(
        tiny_run / "base.safetensors"
    )  # a relative path is tried in the run directory
    assert resolve_base_checkpoint(adapter, {"extra": {"base_checkpoint": str(fake)}}, None) == str(fake)
    assert resolve_base_checkpoint(adapter, {"extra": {}}, "builtin") == str(fake)
    with pytest.raises(FileNotFoundError, match="does not say which base"):
        resolve_base_checkpoint(adapter, {"extra": {}}, None)
    with pytest.raises(FileNotFoundError, match="nowhere.pth .*not found"):
        resolve_base_checkpoint(adapter, {"extra": {"base_checkpoint": "nowhere.pth"}}, None)


def test_not_an_adapter(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="x.safetensors: not a readable safetensors file"):
        load_inference_model(bad)
    with pytest.raises(FileNotFoundError, match="no such run directory or adapter file"):
        load_inference_model(tmp_path / "missing")


def test_an_adapter_trained_on_the_other_builtin_finds_its_base_by_hash() -> None:
    """Metadata naming ``builtin`` whose base_hash is the 128 px base's (an adapter trained before the 256 px
    base became the default, or with ``builtin128``) resolves to the file that matches, not to the default."""
    from salt_seg.model.builtin import BUILTINS, builtin_checkpoint, builtin_with_hash
    from salt_seg.model.checkpoint import read_checkpoint

    hashes = {n: read_checkpoint(builtin_checkpoint(n))[1].content_hash for n in BUILTINS}
    assert len(set(hashes.values())) == len(BUILTINS)  # distinct weights
    for name, h in hashes.items():
        assert builtin_with_hash(h) == name
    assert builtin_with_hash("0" * 64) is None
    adapter = Path("runs/x/adapter.safetensors")
    meta = {"extra": {"base_checkpoint": "builtin"}, "base_hash": hashes["builtin128"]}
    assert resolve_base_checkpoint(adapter, meta, None) == str(builtin_checkpoint("builtin128"))
    meta = {"extra": {"base_checkpoint": "builtin128"}, "base_hash": "unknown"}
    assert resolve_base_checkpoint(adapter, meta, None) == str(builtin_checkpoint("builtin128"))
    # an explicit --checkpoint always wins
    assert resolve_base_checkpoint(adapter, meta, "builtin") == str(builtin_checkpoint("builtin"))
