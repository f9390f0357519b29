"""SALT: parameter count, the reference ReLU against a direct dense computation, compute modes, regulariser."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salt_seg.adapters import (
    AdapterConfig,
    SaltLayer,
    adapter_layers,
    compute_svd,
    count_parameters,
    inject_adapters,
)
from tests.adapters.conftest import make_tiny


def _layer(out=40, fan_in=48, rank=30, r_lora=6, **kw) -> SaltLayer:
    g = torch.Generator().manual_seed(0)
    base = nn.Linear(fan_in, out)
    with torch.no_grad():
        base.weight.copy_(torch.randn(out, fan_in, generator=g) / fan_in**0.5)
        base.bias.copy_(torch.randn(out, generator=g) * 0.1)
    base.requires_grad_(False)
    return SaltLayer(base, compute_svd(base.weight), rank, r_lora, **kw)


@pytest.mark.parametrize(
    "r_lora", [1, 4, 300]
)  # 300 > k - r for every tiny layer: the count is still 2(k-r)·r_lora
def test_trainable_count_per_layer_is_2r_plus_2_residual_r_lora(r_lora: int) -> None:
    model = make_tiny()
    config = AdapterConfig(name="salt", r_lora=r_lora, adapt_neck=True)
    inject_adapters(model, config, progress=False)
    layers = adapter_layers(model)
    assert len(layers) == 18
    for name, layer in layers.items():
        k, r = layer.k, layer.rank
        n = sum(p.numel() for p in layer.adapter_parameters())
        assert n == 2 * r + 2 * (k - r) * r_lora, name
    # released ranks as fractions of k: tiny's attention k = 192 -> 190, MLP k = 192 -> 12, neck k = 128 -> 125
    ranks = {n.rsplit(".", 1)[-1]: layer.rank for n, layer in layers.items()}
    assert ranks == {"qkv": 190, "proj": 190, "lin1": 12, "lin2": 12, "0": 125, "2": 125}
    report = count_parameters(make_tiny(), config)
    assert sum(r.params for r in report.rows if r.kind == "adapter") == sum(
        p.numel() for layer in layers.values() for p in layer.adapter_parameters()
    )


def _randomise(layer: SaltLayer) -> None:
    """Push β negative on some top values and give X·Y negative off-diagonal entries, so both ReLUs act."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.alpha.copy_(1 + 0.3 * torch.randn(layer.rank, generator=g))
        layer.beta.copy_(-layer.S_r * (torch.rand(layer.rank, generator=g) < 0.3))
        layer.X.copy_(torch.randn(layer.X.shape, generator=g) * 0.5)
        layer.Y.copy_(torch.randn(layer.Y.shape, generator=g) * 0.5)


def _direct_reference_weight(layer: SaltLayer) -> torch.Tensor:
    """U · ReLU(Σ') · Vᵀ with the k x k Σ' written out element by element, in float64."""
    k, r = layer.k, layer.rank
    S = layer.S.double()
    sigma = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        sigma[i, i] = layer.alpha[i].double() * S[i] + layer.beta[i].double() if i < r else S[i]
    sigma[r:, r:] += layer.X.double() @ layer.Y.double()
    sigma = torch.clamp(sigma, min=0.0)  # element-wise, off-diagonal entries included
    return layer.Ut.double().T @ sigma @ layer.Vh.double()


@pytest.mark.parametrize("compute", ["factored", "dense", "svd_basis", "reference"])
def test_reference_relu_matches_direct_dense_computation(compute: str) -> None:
    layer = _layer(init="reference", relu="reference", compute=compute)
    _randomise(layer)
    direct = _direct_reference_weight(layer)
    w = layer.base_layer.weight.double()
    assert (w - layer.Ut.double().T @ torch.diag(layer.S.double()) @ layer.Vh.double()).abs().max() < 1e-5
    effective = w + layer.get_delta_weight().double()
    assert (effective - direct).abs().max().item() < 1e-5
    x = torch.randn(7, 48)
    y = layer(x).double()
    expected = x.double() @ direct.T + layer.base_layer.bias.double()
    assert (y - expected).abs().max().item() < 1e-4
    # the element-wise ReLU really differs from the diagonal one here (negative X·Y entries were zeroed)
    diagonal = _layer(init="reference", relu="diagonal")
    diagonal.load_state_dict(layer.state_dict())
    assert (diagonal.get_delta_weight() - layer.get_delta_weight()).abs().max().item() > 1e-3


def test_diagonal_relu_delta_is_the_cheap_exact_form() -> None:
    layer = _layer(relu="diagonal")
    _randomise(layer)
    dsig = F.relu(layer.alpha * layer.S_r + layer.beta) - layer.S_r
    expected = layer.U_r @ torch.diag(dsig) @ layer.Vh_r + layer.U_res @ layer.X @ layer.Y @ layer.Vh_res
    assert (layer.get_delta_weight() - expected).abs().max().item() < 1e-5
    assert (dsig < 0).any()  # the ReLU clipped some shifted values to zero


@pytest.mark.parametrize("conv", [False, True])
def test_compute_modes_agree_in_value_and_gradient(conv: bool) -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(12, 10, 3, padding=1, bias=False) if conv else nn.Linear(48, 40)
    base.requires_grad_(False)
    factors = compute_svd(base.weight)
    x = torch.randn(2, 12, 6, 6) if conv else torch.randn(3, 5, 48)
    results = {}
    for compute in ["factored", "dense", "svd_basis", "reference"]:
        layer = SaltLayer(
            base, factors, rank=7, r_lora=3, init="reference", relu="reference", compute=compute
        )
        torch.manual_seed(2)
        _ = [p.data.normal_(0.0, 0.2) for p in (layer.X, layer.Y)]
        with torch.no_grad():
            layer.beta.fill_(-0.05)
        y = layer(x)
        y.square().sum().backward()
        results[compute] = (y.detach(), torch.cat([p.grad.flatten() for p in layer.adapter_parameters()]))
    ref_y, ref_g = results["reference"]
    for compute, (y, g) in results.items():
        assert (y - ref_y).abs().max().item() < 1e-4, compute
        assert (g - ref_g).abs().max().item() < 1e-3 * ref_g.abs().max().item(), compute


def test_init_modes() -> None:
    ident = _layer(init="identity")
    ref = _layer(init="reference")
    assert torch.count_nonzero(ident.X) == 0 and torch.count_nonzero(ident.Y) == ident.Y.numel()
    assert torch.equal(ident.get_delta_weight(), torch.zeros(40, 48))
    for t in (ref.X, ref.Y):
        assert 0.005 < t.std().item() < 0.02  # N(0, 0.01²) as released
    assert ref.get_delta_weight().abs().max().item() > 0


def test_regularization_value() -> None:
    layer = _layer()
    _randomise(layer)
    dsig = F.relu(layer.alpha * layer.S_r + layer.beta) - layer.S_r
    expected = dsig.norm() + (layer.X @ layer.Y).norm()
    assert abs(layer.regularization().item() - expected.item()) < 1e-4 * expected.item()
    fresh = _layer()
    reg = fresh.regularization()
    assert reg.item() < 1e-12
    reg.backward()  # finite gradient at the identity init (X = 0, Δσ = 0)
    assert all(torch.isfinite(p.grad).all() for p in fresh.adapter_parameters() if p.grad is not None)


def test_rank_equal_k_leaves_no_residual_term() -> None:
    layer = _layer(rank=40)
    assert layer.X is None and layer.Y is None
    assert sum(p.numel() for p in layer.adapter_parameters()) == 80


@pytest.mark.parametrize(("rank", "r_lora"), [(7, 3), (0, 2), (40, 3), (38, 5), (36, 6)])
def test_fused_svd_basis_matches_the_dense_formula(rank: int, r_lora: int) -> None:
    """The fused SVD-basis forward of a linear layer (one autograd node) gives the output and the gradients of
    ``x (W + ΔW)ᵀ + b`` with ``ΔW = U_r diag(ReLU(α⊙σ_r+β) − σ_r) V_rᵀ + U_res X Y V_resᵀ``, for r = 0, r = k,
    r_lora below, at and above k − r."""
    torch.manual_seed(0)
    base = nn.Linear(40, 56)  # k = 40
    base.requires_grad_(False)
    factors = compute_svd(base.weight)
    fused = SaltLayer(base, factors, rank, r_lora, init="reference", compute="svd_basis")
    torch.manual_seed(1)
    for p in fused.adapter_parameters():
        p.data.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(3, 5, 40, requires_grad=True)
    gy = torch.randn(3, 5, 56)
    (fused(x) * gy).sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in fused.adapter_parameters()]
    x.grad = None
    params = [p.detach().clone().requires_grad_(True) for p in fused.adapter_parameters()]
    names = [n for n, _ in fused.named_parameters() if not n.startswith("base_layer.")]
    p = dict(zip(names, params, strict=True))
    U, S, Vh = factors.U, factors.S, factors.Vh
    delta = torch.zeros(56, 40)
    if rank:
        dsig = F.relu(p["alpha"] * S[:rank] + p["beta"]) - S[:rank]
        delta = delta + U[:, :rank] @ torch.diag(dsig) @ Vh[:rank]
    if rank < 40:
        delta = delta + U[:, rank:] @ p["X"] @ p["Y"] @ Vh[rank:]
    y_ref = F.linear(x, base.weight + delta, base.bias)
    (y_ref * gy).sum().backward()
    want = [x.grad] + [q.grad for q in params]
    assert (fused(x) - y_ref).abs().max().item() < 1e-5
    for g, w in zip(got, want, strict=True):
        assert (g - w).abs().max().item() < 1e-4 * max(1.0, w.abs().max().item())
