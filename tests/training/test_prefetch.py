"""Batches made ahead by worker processes, and the wall-clock budget (``train.num_workers``, ``train.time_limit``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from salt_seg.runs import read_metrics
from salt_seg.training.config import TrainSection
from salt_seg.training.loop import train
from salt_seg.training.prefetch import StepBatches, step_batches
from salt_seg.training.schedule import warmup_cosine

from .conftest import tiny_config


def test_worker_batches_equal_the_serial_ones(data) -> None:
    tc = tiny_config(steps=5, batch_size=3, grad_accum=2, prompt="mixed").train
    serial = list(step_batches(StepBatches(data.train, tc, [1, 2], False, 0, 1, first_step=1), 0))
    workers = list(step_batches(StepBatches(data.train, tc, [1, 2], False, 0, 1, first_step=1), 2))
    assert len(serial) == len(workers) == 4  # steps 1..4
    for a, b in zip(serial, workers, strict=True):
        assert len(a) == len(b) == 2  # the micro-batches of grad_accum
        for ma, mb in zip(a, b, strict=True):
            assert ma.samples == mb.samples == 3
            assert torch.equal(ma.images, mb.images) and torch.equal(ma.labels, mb.labels)
            assert torch.equal(ma.prompts.targets, mb.prompts.targets)
            assert ma.prompts.class_ids == mb.prompts.class_ids
            assert ma.prompts.image_index == mb.prompts.image_index
    # consecutive steps differ (the stream moves on)
    assert not torch.equal(serial[0][0].images, serial[1][0].images)


def test_a_run_with_workers_is_the_serial_run(tmp_path, data) -> None:
    train(tiny_config(steps=6, val_every=3), tmp_path / "serial", data=data, progress=False)
    train(tiny_config(steps=6, val_every=3, num_workers=2), tmp_path / "workers", data=data, progress=False)
    a = load_file(tmp_path / "serial" / "adapter.safetensors")
    b = load_file(tmp_path / "workers" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_metrics(tmp_path / "serial") == read_metrics(tmp_path / "workers")


def test_a_time_limit_ends_the_run_at_the_bottom_of_the_decay(tmp_path, data) -> None:
    cfg = tiny_config(steps=100_000, val_every=50_000, time_limit=4.0, lr=2e-3, min_lr_ratio=0.05)
    res = train(cfg, tmp_path / "run", data=data, progress=False)
    assert 1 <= res.steps_done < 100_000
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["time_limited"] is True and summary["steps"] == res.steps_done
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(rows) == res.steps_done and "val_dice" in rows[-1]  # the last step was validated
    # the cosine followed the clock: the last step ran at (almost) the floor of the decay
    assert rows[-1]["lr"] <= 2e-3 * (0.05 + 0.02)
    assert (tmp_path / "run" / "adapter.safetensors").is_file()


def test_the_schedule_follows_the_clock_when_it_is_further_along() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    clock = {"f": 0.0}
    sched = warmup_cosine(
        opt, total_steps=1000, warmup_steps=0, min_ratio=0.0, time_fraction=lambda: clock["f"]
    )
    assert sched.get_last_lr()[0] == pytest.approx(1.0)
    clock["f"] = 0.5  # half the budget used after one step: the cosine is at its middle
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    clock["f"] = 0.0  # the steps are further along than the clock: they set the factor
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 1000)))


@pytest.mark.parametrize(("key", "value"), [("time_limit", -1.0), ("num_workers", -2)])
def test_bad_budget_or_workers_are_refused(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"train.{key}"):
        TrainSection(**{key: value})


class _ThreadReport(torch.utils.data.Dataset):
    """Items whose image holds the worker's largest thread-pool size (torch and every BLAS/OpenMP pool)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        from threadpoolctl import threadpool_info

        n = max([torch.get_num_threads()] + [p["num_threads"] for p in threadpool_info()])
        return {"image": torch.full((3, 4, 4), float(n)), "label": torch.zeros(4, 4, dtype=torch.long)}


def test_workers_compute_on_one_thread() -> None:
    from threadpoolctl import threadpool_limits

    tc = tiny_config(steps=3, batch_size=2).train
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(2):  # the parent runs wider pools, which a forked worker would inherit
            steps = list(step_batches(StepBatches(_ThreadReport(), tc, [1], False, 0, 1, first_step=0), 2))
    finally:
        torch.set_num_threads(before)
    assert len(steps) == 3
    assert all(float(mb.images.max()) == 1.0 for step in steps for mb in step)
