"""GaLore-AdamW (salt_seg/training/galore.py) and ``train.optimizer: galore`` in the loop."""

from __future__ import annotations

import io

import pytest
import torch
import yaml
from safetensors.torch import load_file

from salt_seg.training.galore import GaLoreAdamW, galore_eligible, optimizer_state_bytes
from salt_seg.training.loop import train

from .conftest import tiny_config

HP = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}


def _axis_aligned_grad(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """A gradient whose right singular vectors are the coordinate axes (orthogonal columns of distinct norms)."""
    q, _ = torch.linalg.qr(torch.randn(m, n, generator=gen))
    return q * torch.linspace(3.0, 1.0, n)


def test_full_rank_projection_is_lossless() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in ((12, 8), (8, 12)):
        g = torch.randn(*shape, generator=gen)
        proj = GaLoreAdamW._projector(g, min(shape))
        low = GaLoreAdamW._project(g, proj)
        assert low.shape == (shape[0], 8) if shape[0] >= shape[1] else (8, shape[1])
        back = GaLoreAdamW._project_back(low, proj, g.shape)
        torch.testing.assert_close(back, g, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(proj @ proj.T if shape[0] >= shape[1] else proj.T @ proj, torch.eye(8))


def test_full_rank_galore_equals_adamw() -> None:
    """With rank = min(m, n) and scale 1 GaLore is AdamW in a rotated basis. Adam's element-wise normalisation
    commutes with the rotation only when the basis is axis-aligned (a signed permutation), so the first gradient,
    which sets the projector (no refresh within the run), has orthogonal columns; the later ones are arbitrary."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 12)
    gal = torch.nn.Linear(8, 12)
    gal.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.AdamW(ref.parameters(), **HP)  # type: ignore[arg-type]
    opt_gal = GaLoreAdamW(gal.parameters(), **HP, rank=8, update_interval=1000, scale=1.0, min_dim=4)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        gw = _axis_aligned_grad(12, 8, gen) if step == 0 else torch.randn(12, 8, generator=gen)
        gb = torch.randn(12, generator=gen)
        for lin in (ref, gal):
            lin.weight.grad, lin.bias.grad = gw.clone(), gb.clone()
        opt_ref.step()
        opt_gal.step()
    assert "projector" in opt_gal.state[gal.weight] and "projector" not in opt_gal.state[gal.bias]
    torch.testing.assert_close(gal.weight, ref.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gal.bias, ref.bias, atol=0, rtol=0)  # 1-D: plain AdamW, the same arithmetic


def test_low_rank_keeps_small_moments_and_skips_small_matrices() -> None:
    big, small, vec = torch.nn.Parameter(torch.zeros(96, 80)), torch.nn.Parameter(torch.zeros(96, 8)), None
    vec = torch.nn.Parameter(torch.zeros(80))
    opt = GaLoreAdamW([big, small, vec], rank=16, min_dim=64)
    for p in (big, small, vec):
        p.grad = torch.randn_like(p)
    opt.step()
    assert galore_eligible(big, 64) and not galore_eligible(small, 64) and not galore_eligible(vec, 64)
    assert opt.state[big]["exp_avg"].shape == (96, 16) and opt.state[big]["projector"].shape == (16, 80)
    assert opt.state[small]["exp_avg"].shape == (96, 8) and "projector" not in opt.state[small]
    # rank clipped to the smaller side; a wide matrix is projected from the left
    wide = torch.nn.Parameter(torch.zeros(70, 200))
    opt2 = GaLoreAdamW([wide], rank=128, min_dim=64)
    wide.grad = torch.randn_like(wide)
    opt2.step()
    assert opt2.state[wide]["projector"].shape == (70, 70) and opt2.state[wide]["exp_avg"].shape == (70, 200)
    assert optimizer_state_bytes(opt) == 4 * (2 * 96 * 16 + 16 * 80 + 2 * 96 * 8 + 2 * 80 + 3)


def test_projection_refreshes_on_schedule() -> None:
    p = torch.nn.Parameter(torch.zeros(32, 24))
    opt = GaLoreAdamW([p], rank=4, update_interval=3, min_dim=8)
    gen = torch.Generator().manual_seed(0)
    projectors, refreshes = [], []
    for _ in range(10):
        p.grad = torch.randn(32, 24, generator=gen)
        opt.step()
        projectors.append(opt.state[p]["projector"].clone())
        refreshes.append(opt.state[p]["refreshes"])
    # refreshed before steps 0, 3, 6, 9 (0-based): 4 SVDs in 10 steps
    assert refreshes == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    changed = [not torch.equal(projectors[i], projectors[i - 1]) for i in range(1, 10)]
    assert changed == [False, False, True, False, False, True, False, False, True]


def _run(opt: GaLoreAdamW, params: list[torch.nn.Parameter], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def test_state_dict_round_trip_resumes_bit_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(40, 30, generator=gen), torch.randn(30, generator=gen)]
    grads = [[torch.randn(40, 30, generator=gen), torch.randn(30, generator=gen)] for _ in range(9)]

    def fresh() -> tuple[GaLoreAdamW, list[torch.nn.Parameter]]:
        params = [torch.nn.Parameter(t.clone()) for t in init]
        groups = [{"params": [params[0]], "lr": 3e-3}, {"params": [params[1]], "lr": 1e-2}]
        return GaLoreAdamW(groups, rank=6, update_interval=4, scale=0.25, min_dim=16), params

    whole, pw = fresh()
    _run(whole, pw, grads)

    first, pf = fresh()
    _run(first, pf, grads[:5])
    buf = io.BytesIO()
    torch.save({"optimizer": first.state_dict(), "params": [p.detach() for p in pf]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    second, ps = fresh()
    with torch.no_grad():
        for p, t in zip(ps, saved["params"], strict=True):
            p.copy_(t)
    second.load_state_dict(saved["optimizer"])
    _run(second, ps, grads[5:])  # crosses a refresh (before the 9th step)
    for a, b in zip(pw, ps, strict=True):
        assert torch.equal(a, b)
    assert second.state[ps[0]]["refreshes"] == whole.state[pw[0]]["refreshes"] == 3


def test_tiny_run_with_galore_records_its_keys_and_resumes(tmp_path, data) -> None:
    over = {
        "optimizer": "galore",
        "galore_rank": 8,
        "galore_update_interval": 3,
        "galore_min_dim": 16,
        "steps": 6,
        "val_every": 3,
    }
    cfg = tiny_config(**over)
    res = train(cfg, tmp_path / "full", data=data, progress=False)
    assert res.steps_done == 6
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())["train"]
    assert {k: saved[k] for k in over} == over and saved["galore_scale"] == 0.25
    state = torch.load(tmp_path / "full/checkpoints/step-000006/state.pt", weights_only=True)
    projected = [s for s in state["optimizer"]["state"].values() if "projector" in s]
    assert projected and all(s["projector"].shape[0] <= 8 or s["projector"].shape[1] <= 8 for s in projected)

    train(cfg, tmp_path / "part", data=data, progress=False, stop_after=3)
    train(cfg, tmp_path / "part", data=data, progress=False, resume=True)
    a = load_file(tmp_path / "full" / "adapter.safetensors")
    b = load_file(tmp_path / "part" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_default_config_gains_only_the_optimizer_keys() -> None:
    train_doc = tiny_config().to_dict()["train"]
    assert train_doc["optimizer"] == "adamw"
    assert {k: train_doc[k] for k in train_doc if k.startswith("galore_")} == {
        "galore_rank": 128,
        "galore_update_interval": 200,
        "galore_scale": 0.25,
        "galore_min_dim": 64,
    }
    with pytest.raises(ValueError, match="train.optimizer"):
        tiny_config(optimizer="sgd")
