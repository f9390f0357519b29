"""Q-GaLore (salt_seg/training/qgalore.py) and ``train.optimizer: q-galore`` in the loop."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from salt_seg.training.galore import optimizer_state_bytes
from salt_seg.training.loop import train
from salt_seg.training.qgalore import (
    QGaLoreAdamW,
    dequantize_int8,
    dequantize_minmax,
    quantize_int8,
    quantize_minmax,
    stochastic_round_int8,
)

from .conftest import tiny_config

HP = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}


def test_int4_projector_codes_pack_two_a_byte_and_round_to_nearest() -> None:
    x = torch.randn(37, 29, generator=torch.Generator().manual_seed(0))
    codes, scale, zero = quantize_minmax(x, bits=4, group_size=16)
    assert codes.dtype == torch.uint8 and codes.numel() == math.ceil(37 * 29 / 2)
    assert scale.numel() == zero.numel() == math.ceil(37 * 29 / 16)
    back = dequantize_minmax(codes, scale, zero, 4, 16, x.shape)
    # round to nearest: within half a step of its group (plus the zero point's rounding, another half step)
    step = scale.repeat_interleave(16)[: x.numel()].reshape(x.shape)
    assert bool(((back - x).abs() <= step + 1e-6).all())
    c8, s8 = quantize_int8(x, group_size=16)
    assert c8.dtype == torch.int8 and int(c8.abs().max()) == 127
    step8 = s8.repeat_interleave(16)[: x.numel()].reshape(x.shape)
    assert bool(((dequantize_int8(c8, s8, 16, x.shape) - x).abs() <= step8 / 2 + 1e-7).all())


def test_stochastic_rounding_to_int8_is_unbiased() -> None:
    """The mean of N stochastic roundings of a fixed group is within 5 standard errors of each value; round to
    nearest of the same values is off by a fixed 0.3 steps (far outside that band)."""
    group = 64
    scale = 0.01
    frac = torch.rand(group, generator=torch.Generator().manual_seed(1))
    codes = torch.randint(-120, 120, (group,), generator=torch.Generator().manual_seed(2)).float()
    x = (codes + frac) * scale
    x[0] = 127 * scale  # the group's max |x| fixes its scale at exactly `scale`
    n = 20000
    gen = torch.Generator().manual_seed(0)
    q, s = stochastic_round_int8(x.repeat(n), group, gen)
    assert torch.allclose(s, torch.full_like(s, scale))
    values = dequantize_int8(q, s, group, torch.Size([n, group]))
    mean = values.double().mean(dim=0).float()
    # each rounding is x's floor or ceil: std = scale * sqrt(p (1 - p)), p the fractional part
    p = x / scale - (x / scale).floor()
    se = scale * (p * (1 - p)).sqrt() / math.sqrt(n)
    err = (mean - x).abs()
    assert bool((err <= 5 * se + 1e-6).all()), float((err / (se + 1e-12)).max())  # 1e-6: float32 resolution
    assert float(err.mean()) < 0.01 * scale
    # round to nearest is biased: values 0.3 steps above a code always round down
    y = (codes + 0.3) * scale
    y[0] = 127 * scale
    rq, rs = quantize_int8(y, group)
    bias = (dequantize_int8(rq, rs, group, y.shape) - y)[1:]
    assert torch.allclose(bias, torch.full_like(bias, -0.3 * scale), atol=1e-6)


def test_small_updates_survive_int8_weights_on_average() -> None:
    """An update of a tenth of a quantization step each step: round to nearest would never move the weight;
    stochastic rounding moves it by the sum of the updates on average."""
    p = torch.nn.Parameter(torch.zeros(64, 64))
    with torch.no_grad():
        p[0, 0] = 1.27  # max |w| of its group: scale 0.01
    # rank 1: the gradient's one direction, all-ones / 8; Adam's normalised step of 1 becomes lr / 8 an entry
    opt = QGaLoreAdamW([p], lr=8e-3, weight_decay=0.0, rank=1, min_dim=8, group_size=4096, scale=1.0)
    opt.step()  # no gradient: nothing happens
    assert not opt.state[p]
    start = p.detach().clone()
    for _ in range(30):
        p.grad = -torch.ones(64, 64)  # +1e-3 an entry a step: a tenth of a quantization step
        opt.step()
    drift = (p.detach() - start)[1:].mean()  # the first row holds the group's max, whose scale moves the rest
    torch.testing.assert_close(drift, torch.tensor(30 * 1e-3), atol=2e-3, rtol=0)
    assert set(torch.unique((p.detach() / 0.0100).round()).tolist()) >= {0.0, 1.0}


def _lowrank_grad(gen: torch.Generator, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return 5 * u @ v.T + 0.01 * torch.randn(u.shape[0], v.shape[0], generator=gen)


def test_lazy_refresh_skips_svds_while_the_subspace_is_stable() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(48, 1, generator=gen), torch.randn(40, 1, generator=gen)
    p = torch.nn.Parameter(torch.zeros(48, 40))
    opt = QGaLoreAdamW(
        [p], rank=4, update_interval=2, min_dim=8, patience=2, interval_growth=2, cos_threshold=0.9
    )
    refreshed = []
    for step in range(40):
        p.grad = _lowrank_grad(gen, u, v)
        before = opt.state[p].get("svd_count", 0)
        opt.step()
        if opt.state[p]["svd_count"] > before:
            refreshed.append(step)
    # interval 2, doubled after every 2 stable refreshes: 2, 2 | 4, 4 | 8, 8 | 16 ...
    assert refreshed == [0, 2, 4, 8, 12, 20, 28]
    assert opt.state[p]["interval"] == 16
    assert opt.svd_counts() == (7, 20)  # 13 of the fixed schedule's 20 SVDs saved


def test_lazy_refresh_keeps_the_schedule_when_the_subspace_moves() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(48, 40))
    opt = QGaLoreAdamW([p], rank=4, update_interval=2, min_dim=8, patience=2, cos_threshold=0.9)
    for _ in range(40):
        # a new dominant direction at every refresh
        u, v = torch.randn(48, 1, generator=gen), torch.randn(40, 1, generator=gen)
        p.grad = _lowrank_grad(gen, u, v)
        opt.step()
    assert opt.state[p]["interval"] == 2
    assert opt.svd_counts() == (20, 20)

    # stable, then moving: the count of stable refreshes restarts and the interval stops growing
    q = torch.nn.Parameter(torch.zeros(48, 40))
    opt = QGaLoreAdamW([q], rank=4, update_interval=2, min_dim=8, patience=2, cos_threshold=0.9)
    u, v = torch.randn(48, 1, generator=gen), torch.randn(40, 1, generator=gen)
    for step in range(30):
        if step >= 6:
            u, v = torch.randn(48, 1, generator=gen), torch.randn(40, 1, generator=gen)
        q.grad = _lowrank_grad(gen, u, v)
        opt.step()
    # refreshes at 0, 2, 4 (stable twice: interval 4), then 8, 12, 16, ... all moving: the interval stays 4
    assert opt.state[q]["interval"] == 4 and opt.state[q]["stable"] == 0
    assert opt.svd_counts() == (3 + 6, 15)


def test_full_rank_without_quantisation_noise_is_close_to_adamw() -> None:
    """Rank = min(m, n), scale 1, float weights, an 8-bit projector and an axis-aligned first gradient (whose
    projector, kept all run, is a signed permutation): AdamW's update up to the projector's 8-bit rounding."""
    torch.manual_seed(0)
    ref, qg = torch.nn.Linear(8, 12), torch.nn.Linear(8, 12)
    qg.load_state_dict(ref.state_dict())
    w0 = ref.weight.detach().clone()
    opt_ref = torch.optim.AdamW(ref.parameters(), **HP)  # type: ignore[arg-type]
    opt_qg = QGaLoreAdamW(
        qg.parameters(),
        **HP,
        rank=8,
        update_interval=1000,
        scale=1.0,
        min_dim=4,
        proj_bits=8,
        int8_weights=False,
    )
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        if step == 0:
            q, _ = torch.linalg.qr(torch.randn(12, 8, generator=gen))
            gw = q * torch.linspace(3.0, 1.0, 8)
        else:
            gw = torch.randn(12, 8, generator=gen)
        gb = torch.randn(12, generator=gen)
        for lin in (ref, qg):
            lin.weight.grad, lin.bias.grad = gw.clone(), gb.clone()
        opt_ref.step()
        opt_qg.step()
    d_ref, d_qg = ref.weight.detach() - w0, qg.weight.detach() - w0
    assert float((d_qg - d_ref).norm() / d_ref.norm()) < 0.02
    torch.testing.assert_close(qg.bias, ref.bias, atol=0, rtol=0)  # 1-D: plain AdamW


def _run(opt: QGaLoreAdamW, params: list[torch.nn.Parameter], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def test_state_dict_round_trip_resumes_bit_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(40, 30, generator=gen), torch.randn(30, generator=gen)]
    u, v = torch.randn(40, 1, generator=gen), torch.randn(30, 1, generator=gen)
    grads = [[_lowrank_grad(gen, u, v), torch.randn(30, generator=gen)] for _ in range(14)]

    def fresh() -> tuple[QGaLoreAdamW, list[torch.nn.Parameter]]:
        params = [torch.nn.Parameter(t.clone()) for t in init]
        groups = [{"params": [params[0]], "lr": 3e-3}, {"params": [params[1]], "lr": 1e-2}]
        opt = QGaLoreAdamW(groups, rank=6, update_interval=2, min_dim=16, group_size=64, patience=2, seed=3)
        return opt, params

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
    _run(
        second, ps, grads[5:]
    )  # crosses refreshes and an interval growth, with stochastic rounding every step
    for a, b in zip(pw, ps, strict=True):
        assert torch.equal(a, b)
    sw, ss = whole.state[pw[0]], second.state[ps[0]]
    assert torch.equal(sw["weight_codes"], ss["weight_codes"]) and sw["interval"] == ss["interval"] == 8
    assert second.svd_counts() == whole.svd_counts() == (5, 7)
    # the int8 codes, the INT4 projector and the moments are all in the state, and counted
    for st in (sw, ss):  # integer codes stay integer through load_state_dict
        assert st["weight_codes"].dtype == torch.int8 and st["proj_codes"].dtype == torch.uint8
    assert optimizer_state_bytes(whole) > 40 * 30  # at least the int8 copy of the matrix


def test_tiny_run_with_qgalore_records_its_keys_and_resumes(tmp_path, data) -> None:
    over = {
        "optimizer": "q-galore",
        "galore_rank": 8,
        "galore_update_interval": 1,
        "galore_min_dim": 16,
        "qgalore_group_size": 64,
        "qgalore_patience": 2,
        "steps": 6,
        "val_every": 3,
    }
    cfg = tiny_config(**over)
    res = train(cfg, tmp_path / "full", data=data, progress=False)
    assert res.steps_done == 6
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())["train"]
    assert {k: saved[k] for k in over} == over and saved["qgalore_proj_bits"] == 4
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    done, fixed = summary["svd_refreshes"], summary["svd_refreshes_fixed_schedule"]
    assert 0 < done <= fixed and fixed % 6 == 0  # 6 refreshes a matrix on the fixed schedule
    state = torch.load(tmp_path / "full/checkpoints/step-000006/state.pt", weights_only=True)
    projected = [s for s in state["optimizer"]["state"].values() if "proj_codes" in s]
    assert projected and all(s["weight_codes"].dtype == torch.int8 for s in projected)

    train(cfg, tmp_path / "part", data=data, progress=False, stop_after=3)
    train(cfg, tmp_path / "part", data=data, progress=False, resume=True)
    a = load_file(tmp_path / "full" / "adapter.safetensors")
    b = load_file(tmp_path / "part" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["svd_refreshes"] == done


def test_config_keys_and_bad_values() -> None:
    train_doc = tiny_config().to_dict()["train"]
    assert {k: train_doc[k] for k in train_doc if k.startswith("qgalore_")} == {
        "qgalore_proj_bits": 4,
        "qgalore_group_size": 256,
        "qgalore_int8_weights": True,
        "qgalore_cos_threshold": 0.4,
        "qgalore_patience": 5,
        "qgalore_interval_growth": 2,
    }
    assert tiny_config(optimizer="q-galore").train.optimizer == "q-galore"
    with pytest.raises(ValueError, match="train.qgalore_proj_bits"):
        tiny_config(qgalore_proj_bits=1)
    with pytest.raises(ValueError, match="train.qgalore_patience"):
        tiny_config(qgalore_patience=0)
