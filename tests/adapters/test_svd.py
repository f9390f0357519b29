"""SVD factors: fp32, cached on disk by base hash + layer + shape, verified on every hit; rank resolution."""

from __future__ import annotations

import pytest
import torch

from salt_seg.adapters import svd as svd_mod
from salt_seg.adapters.svd import compute_svd, decompose_layers, default_cache_dir, resolve_rank


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"a.qkv": torch.randn(36, 12, generator=g), "b.neck": torch.randn(8, 4, 3, 3, generator=g)}


def test_factors_are_fp32_and_reconstruct_the_weight() -> None:
    w = torch.randn(30, 20, dtype=torch.float64)
    f = compute_svd(w)
    assert f.U.dtype == f.S.dtype == f.Vh.dtype == torch.float32
    assert f.U.shape == (30, 20) and f.Vh.shape == (20, 20) and f.k == 20
    assert ((f.U * f.S) @ f.Vh - w.float()).abs().max().item() < 1e-5
    conv = compute_svd(torch.randn(8, 4, 3, 3))
    assert conv.Vh.shape == (8, 36)  # co x (ci·kh·kw)


def test_second_decomposition_comes_from_the_cache(tmp_path, monkeypatch) -> None:
    calls = []
    real = svd_mod.compute_svd
    monkeypatch.setattr(svd_mod, "compute_svd", lambda w: calls.append(1) or real(w))
    weights = _weights()
    first = decompose_layers(weights, base_hash="h1", cache_dir=tmp_path, progress=False)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    second = decompose_layers(weights, base_hash="h1", cache_dir=tmp_path, progress=False)
    assert len(calls) == 2  # no new SVD
    for name in weights:
        assert torch.equal(first[name].U, second[name].U) and torch.equal(first[name].S, second[name].S)
    decompose_layers(weights, base_hash="h2", cache_dir=tmp_path, progress=False)
    assert len(calls) == 4  # another base: another key


def test_a_stale_entry_is_detected_and_recomputed(tmp_path, monkeypatch) -> None:
    weights = _weights()
    decompose_layers(weights, base_hash="same", cache_dir=tmp_path, progress=False)
    changed = {k: v + 0.5 for k, v in weights.items()}  # wrongly claimed to be the same base
    got = decompose_layers(changed, base_hash="same", cache_dir=tmp_path, progress=False)
    w = changed["a.qkv"]
    assert ((got["a.qkv"].U * got["a.qkv"].S) @ got["a.qkv"].Vh - w).abs().max().item() < 1e-5


def test_without_base_hash_the_key_is_the_weight_bytes(tmp_path) -> None:
    weights = _weights()
    decompose_layers(weights, cache_dir=tmp_path, progress=False)
    decompose_layers({k: v * 2 for k, v in weights.items()}, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_cache_dir_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SALT_SEG_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "svd"
    monkeypatch.setenv("SALT_SEG_CACHE", "off")
    assert default_cache_dir() is None


def test_rank_resolution() -> None:
    assert resolve_rank({"fraction": 0.99}, None, 768) == 760  # the released attention rank
    assert resolve_rank({"fraction": 0.065}, None, 768) == 50  # MLP
    assert resolve_rank({"fraction": 0.977}, None, 256) == 250  # neck
    assert resolve_rank({"fraction": 0.001}, None, 100) == 1  # never 0
    S = torch.tensor([3.0, 2.0, 1.0])  # energy shares 9/14, 13/14, 14/14
    assert resolve_rank({"energy": 0.6}, S, 3) == 1
    assert resolve_rank({"energy": 0.9}, S, 3) == 2
    assert resolve_rank({"energy": 0.99}, S, 3) == 3
    assert resolve_rank(5, None, 8) == 5
    with pytest.raises(ValueError, match="rank 9 for layer.x exceeds its k"):
        resolve_rank(9, None, 8, "layer.x")
    with pytest.raises(ValueError, match="singular values"):
        resolve_rank({"energy": 0.9}, None, 8)
