"""The cost model's per-layer choice between factored, dense-delta and SVD-basis forms."""

from __future__ import annotations

import torch
from torch import nn

from salt_seg.adapters import LoraLayer, SaltLayer, compute_svd
from salt_seg.adapters.cost import TermShape, dense_cost, factored_cost


def _salt(fan_in: int, out: int, rank: int) -> SaltLayer:
    base = nn.Linear(fan_in, out)
    base.requires_grad_(False)
    factors = compute_svd(base.weight) if fan_in * out <= 200_000 else None
    if factors is None:  # ViT-B shapes: orthonormal stand-ins are enough for choosing (no SVD in unit tests)
        k = min(fan_in, out)
        from salt_seg.adapters.svd import SVDFactors

        factors = SVDFactors(torch.eye(out, k), torch.ones(k), torch.eye(k, fan_in))
    return SaltLayer(base, factors, rank, 4)


def _mode(layer, tokens: int, training: bool) -> str:
    x = torch.zeros(tokens, layer.fan_in)
    with torch.set_grad_enabled(training):
        layer._mode_cache.clear()
        return layer.compute_mode(x)


def test_small_rank_is_factored_and_released_attention_rank_is_not() -> None:
    qkv8, qkv760 = _salt(768, 2304, 8), _salt(768, 2304, 760)
    for tokens in (1024, 4096):
        assert _mode(qkv8, tokens, True) == "factored"
        assert _mode(qkv760, tokens, True) in ("dense", "svd_basis")
    assert _mode(_salt(768, 3072, 50), 4096, True) == "factored"  # released MLP rank


def test_inference_never_uses_the_svd_basis_and_prefers_dense_for_many_tokens() -> None:
    qkv760 = _salt(768, 2304, 760)
    assert _mode(qkv760, 4096, False) == "dense"
    assert _mode(qkv760, 1, False) == "factored"  # one token: rebuilding ΔW is not worth it
    assert "svd_basis" not in qkv760.mode_costs(4096, training=False)


def test_dense_wins_once_tokens_exceed_about_in_out_over_in_plus_out() -> None:
    shapes = [TermShape(760, 760, "diag", core_trainable=True)]
    crossing = next(
        n
        for n in range(16, 20000, 16)
        if dense_cost(shapes, n, 2304, 768, False) < factored_cost(shapes, n, 2304, 768, False)
    )
    assert 100 <= crossing <= 2000  # in·out/(in+out) = 576 for 768→2304


def test_lora_is_factored() -> None:
    base = nn.Linear(768, 2304)
    base.requires_grad_(False)
    assert _mode(LoraLayer(base, 4), 4096, True) == "factored"
