from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from salt_seg.cli import main
from salt_seg.model import build_model
from salt_seg.model.checkpoint import load_base_model, read_checkpoint, state_dict_hash
from salt_seg.model.sam import InputPrompt


@pytest.fixture(scope="module")
def vit_b_files(tmp_path_factory) -> dict[str, Path]:
    """A random state dict in the official vit_b key layout, saved plainly, with `module.`, and in {"model": ...}."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(7)
    sd = build_model("vit_b").state_dict()
    for k in sd:  # SAM zero-initialises these; make them informative for the interpolation checks
        if k.endswith("pos_embed") or ".rel_pos_" in k:
            sd[k] = torch.randn_like(sd[k])
    files = {"plain": d / "sam_vit_b.pth", "ddp": d / "ddp.pth", "wrapped": d / "train.pth"}
    torch.save(sd, files["plain"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, files["ddp"])
    torch.save({"model": sd, "epoch": 3}, files["wrapped"])
    files["_hash"] = state_dict_hash(sd)  # type: ignore[assignment]
    return files


@pytest.mark.parametrize("kind", ["plain", "ddp", "wrapped"])
def test_vit_b_layouts_load_and_hash_alike(vit_b_files, kind: str) -> None:
    model, info = load_base_model(None, vit_b_files[kind])
    assert info.variant == "vit_b"
    assert info.image_size == 1024
    assert info.content_hash == vit_b_files["_hash"]
    assert info.prefix == ("module." if kind == "ddp" else None)
    assert info.wrapper == ("model" if kind == "wrapped" else None)
    ref = torch.load(vit_b_files["plain"], weights_only=True)
    torch.testing.assert_close(
        model.state_dict()["image_encoder.blocks.3.mlp.lin1.weight"],
        ref["image_encoder.blocks.3.mlp.lin1.weight"],
        atol=0,
        rtol=0,
    )


def test_loading_vit_b_into_vit_l_names_the_variant(vit_b_files) -> None:
    with pytest.raises(
        ValueError, match=r"does not fit variant 'vit_l'.*looks like variant 'vit_b'.*--variant vit_b"
    ):
        load_base_model("vit_l", vit_b_files["plain"])


@pytest.mark.parametrize("kind", ["plain", "ddp", "wrapped"])
def test_inspect_json_names_the_variant(vit_b_files, kind: str, capsys) -> None:
    rc = main(["inspect", str(vit_b_files[kind]), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["variant"] == "vit_b"
    assert out["loads"] is True
    assert out["content_hash"] == vit_b_files["_hash"]
    assert out["num_parameters"] == 93_735_472 + 256  # + the prompt encoder's gaussian PE buffer


def test_inspect_reports_wrong_variant_with_fix(vit_b_files, capsys) -> None:
    rc = main(["inspect", str(vit_b_files["plain"]), "--variant", "vit_l"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "loads: NO" in out and "--variant vit_b" in out


@pytest.mark.parametrize("size", [256, 512])
def test_vit_b_runs_at_other_sizes_after_interpolation(vit_b_files, size: int) -> None:
    model, _ = load_base_model("vit_b", vit_b_files["plain"], image_size=size)
    grid = size // 16
    assert model.image_encoder.pos_embed.shape == (1, grid, grid, 768)
    assert model.image_encoder.blocks[2].attn.rel_pos_h.shape == (2 * grid - 1, 64)  # global block
    assert model.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)  # windowed: unchanged
    assert model.image_encoder.blocks[0].window_size == 14  # windowed attention stays on
    # the interpolated table at the original size reproduces the original values
    ref = torch.load(vit_b_files["plain"], weights_only=True)
    pe = model.image_encoder.pos_embed.detach()
    # bicubic resampling of a 64x64 table: the mean is kept and values stay in the original range
    assert pe.mean().item() == pytest.approx(ref["image_encoder.pos_embed"].mean().item(), abs=0.02)
    assert pe.abs().max() <= 1.5 * ref["image_encoder.pos_embed"].abs().max()
    # windowed blocks keep their tables bit for bit
    torch.testing.assert_close(
        model.image_encoder.blocks[0].attn.rel_pos_w.detach(),
        ref["image_encoder.blocks.0.attn.rel_pos_w"],
        atol=0,
        rtol=0,
    )
    with torch.no_grad():
        logits, iou = model(
            torch.randn(1, 3, size, size), [InputPrompt(box=torch.tensor([10.0, 10.0, 90.0, 90.0]))]
        )
    assert logits.shape == (1, 1, size // 4, size // 4)
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()


def test_adapt_at_native_size_is_identity(vit_b_files) -> None:
    from salt_seg.model.checkpoint import adapt_to_model

    sd = torch.load(vit_b_files["plain"], weights_only=True)
    out = adapt_to_model(sd, build_model("vit_b"))
    assert all(out[k] is sd[k] for k in sd)


def test_safetensors_and_pth_share_the_content_hash(tmp_path) -> None:
    sd = build_model("tiny").state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    _, a = read_checkpoint(tmp_path / "w.safetensors")
    _, b = read_checkpoint(tmp_path / "w.pth")
    assert a.format == "safetensors" and b.format == "torch"
    assert a.content_hash == b.content_hash == state_dict_hash(sd)
    assert a.variant == b.variant == "tiny"


def test_pickle_needing_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": build_model("tiny").state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match="refused to load.*could run code"):
        read_checkpoint(path)


def test_missing_and_garbage_files_give_clear_errors(tmp_path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(junk)
    rc = main(["inspect", str(junk)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "junk.pth" in err


def test_class_tokens_survive_a_round_trip(tmp_path) -> None:
    m = build_model("tiny", num_classes=3)
    torch.save(m.state_dict(), tmp_path / "m.pth")
    m2, info = load_base_model("tiny", tmp_path / "m.pth")
    assert info.num_classes == 3 and m2.num_classes == 3
    torch.testing.assert_close(m2.class_tokens.weight, m.class_tokens.weight)


class _RunsCode:
    """A pickle payload that would call ``os.getpid`` on load (harmless, but code all the same)."""

    def __reduce__(self):
        import os

        return (os.getpid, ())


def test_malicious_pickle_is_one_line_without_torch_warnings(tmp_path, capsys) -> None:
    import pickle
    import warnings

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _RunsCode()}, f, protocol=4)  # protocol 4: torch warns about it before refusing
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc = main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "UserWarning" not in err
    assert err.startswith(
        f"salt-seg inspect: error: {path}: refused to load: the file contains Python objects"
    )
    assert "(Unsupported operand 149)" in err and "In PyTorch 2.6" not in err
