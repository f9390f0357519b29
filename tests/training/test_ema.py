"""Weight averaging during training (``train.ema_decay``): what it averages, what it exports, and exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from salt_seg import runs
from salt_seg.training import checkpoints as ck
from salt_seg.training.ema import ParamEma
from salt_seg.training.loop import train

from .conftest import tiny_config


def test_the_average_follows_the_formula_with_its_warm_up() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    ema = ParamEma([("p", p)], decay=0.9)
    expected = torch.zeros(3)
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0], start=1):
        with torch.no_grad():
            p.fill_(value)
        ema.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
        assert torch.allclose(ema.average[0], expected)
    assert ema.rate(1) == pytest.approx(2 / 11) and ema.rate(1000) == 0.9
    with ema.applied() as raw:  # the average is in the parameter inside, the raw tensor outside
        assert torch.equal(p.detach(), ema.average[0]) and torch.equal(raw["p"], torch.full((3,), 5.0))
    assert torch.equal(p.detach(), torch.full((3,), 5.0))
    with pytest.raises(ValueError, match="decay"):
        ParamEma([("p", p)], decay=1.0)


def test_averaging_leaves_training_alone_and_exports_the_average(tmp_path, data) -> None:
    plain = train(tiny_config(steps=6, val_every=3), tmp_path / "plain", data=data, progress=False)
    ema = train(tiny_config(steps=6, val_every=3, ema_decay=0.5), tmp_path / "ema", data=data, progress=False)
    assert plain.steps_done == ema.steps_done == 6
    # the optimizer saw the same tensors: the raw weights at step 6 are the plain run's, bit for bit
    raw = ck.load_last(tmp_path / "ema").train_state.raw_weights
    plain_last = load_file(runs.unit_path(tmp_path / "plain", 6) / "adapter.safetensors")
    assert raw.keys() == plain_last.keys() and len(raw) > 0
    assert all(torch.equal(raw[k], plain_last[k]) for k in raw)
    # the unit's adapter is the average: it differs from the raw tensors (the losses and metrics rows match)
    averaged = load_file(runs.unit_path(tmp_path / "ema", 6) / "adapter.safetensors")
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    rows_plain = [r["loss"] for r in runs.read_metrics(tmp_path / "plain") if "loss" in r]
    rows_ema = [r["loss"] for r in runs.read_metrics(tmp_path / "ema") if "loss" in r]
    assert rows_plain == rows_ema
    # a run without averaging keeps state.pt as before (no raw copy)
    assert "raw_weights" not in ck.load_last(tmp_path / "plain").state


def test_a_resumed_averaged_run_equals_the_uninterrupted_one(tmp_path, data) -> None:
    cfg = tiny_config(steps=6, val_every=2, ema_decay=0.7)
    train(cfg, tmp_path / "whole", data=data, progress=False)
    train(cfg, tmp_path / "cut", data=data, progress=False, stop_after=4)
    train(cfg, tmp_path / "cut", data=data, progress=False, resume=True)
    a = load_file(tmp_path / "whole" / "adapter.safetensors")
    b = load_file(tmp_path / "cut" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = ck.load_last(tmp_path / "whole").train_state.raw_weights
    rb = ck.load_last(tmp_path / "cut").train_state.raw_weights
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    assert runs.read_metrics(tmp_path / "whole") == runs.read_metrics(tmp_path / "cut")


def test_turning_averaging_on_for_a_run_saved_without_it_is_refused(tmp_path, data) -> None:
    train(tiny_config(steps=4, val_every=2), tmp_path / "run", data=data, progress=False, stop_after=2)
    with pytest.raises(ValueError, match="--resume with a different config"):
        train(
            tiny_config(steps=4, val_every=2, ema_decay=0.9),
            tmp_path / "run",
            data=data,
            progress=False,
            resume=True,
        )
