from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from salt_seg.runs import read_metrics
from salt_seg.training.loop import train

from .conftest import tiny_config


def test_short_run_lowers_loss_and_raises_val_dice(tmp_path, data) -> None:
    cfg = tiny_config(steps=20, val_every=10)
    res = train(cfg, tmp_path / "run", data=data, progress=False)
    rows = read_metrics(tmp_path / "run")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # loss goes down
    assert res.best_val_dice > res.initial_val_dice + 0.05  # validation Dice rises above its start
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "provenance.json",
        "metrics.jsonl",
        "adapter.safetensors",
        "summary.json",
        "split.json",
        "base.safetensors",
        "plots/curves.png",
        "plots/val_overlays.png",
        f"checkpoints/step-{res.best_step:06d}/state.pt",  # the best checkpoint unit
        "checkpoints/step-000020/adapter.safetensors",  # the last one
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_dice"] == pytest.approx(res.best_val_dice)
    assert summary["trainable_parameters"] == res.trainable_parameters > 0
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 0 and torch.__version__.startswith(prov["versions"]["torch"])
    # training state loads under weights_only (what --resume does)
    state = torch.load(run / "checkpoints/step-000020/state.pt", weights_only=True)
    assert state["step"] == 20 and isinstance(state["torch_rng"], torch.Tensor)


def test_resume_is_bit_identical(tmp_path, data) -> None:
    cfg = tiny_config(steps=8, val_every=4)
    train(cfg, tmp_path / "full", data=data, progress=False)
    part = train(cfg, tmp_path / "part", data=data, progress=False, stop_after=4)
    assert part.steps_done == 4 and not (tmp_path / "part" / "adapter.safetensors").exists()
    first = torch.load(tmp_path / "part/checkpoints/step-000004/state.pt", weights_only=True)["seconds"]
    assert 0 < first <= part.seconds
    resumed = train(cfg, tmp_path / "part", data=data, progress=False, resume=True)
    # the reported training time covers both segments, not only the resumed one
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["seconds"] == pytest.approx(resumed.seconds) and resumed.seconds > first
    a = load_file(tmp_path / "full" / "adapter.safetensors")
    b = load_file(tmp_path / "part" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(tmp_path / "part"))


def test_run_dir_is_never_silently_overwritten(tmp_path, data) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        train(tiny_config(steps=1), tmp_path / "used", data=data, progress=False)
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_resume_of_a_non_run_is_an_error(tmp_path, data) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train(tiny_config(steps=1), tmp_path / "nothing", data=data, progress=False, resume=True)


class _AnswersNothing(torch.nn.Module):
    """A model whose every answer is empty (an untrained class token's typical answer)."""

    def forward(self, images, prompts, image_index):
        return torch.full((len(prompts), 1, 32, 32), -10.0), torch.zeros(len(prompts), 1)


def test_validation_leaves_out_classes_absent_from_both_slice_and_answer(data) -> None:
    """With class-token prompts every class is asked on every slice; a class absent from the slice and from the
    answer must not count as a perfect score, or a model that answers nothing looks best (it did on colin27-aal's
    12 classes: validation 0.667 at step 0, test Dice 0 after "early stopping")."""
    import numpy as np

    from salt_seg.training.distributed import DistInfo
    from salt_seg.training.loop import validate

    absent = [i for i in range(len(data.val)) if not (np.asarray(data.val[i]["label"]) == 2).any()]
    assert absent and len(absent) < len(data.val)  # class 2 is missing from some slices, present on others
    cfg = tiny_config(prompt="auto")
    dice, per_class, _ = validate(_AnswersNothing(), data, cfg, "cpu", DistInfo())
    assert dice == 0.0 and per_class == {1: 0.0, 2: 0.0}
