"""Checkpoint units survive ``kill -9`` and a full disk: a killed run resumes to the uninterrupted run's result.

The CLI runs in a subprocess that kills itself with SIGKILL at named points (``SALT_SEG_FAULT``, see
:mod:`salt_seg.training.checkpoints`) or is killed from outside after a random delay; each time the run is resumed
(``--resume``, or ``--out`` again when the kill came before the run folder existed) and its final adapter, best
checkpoint, ``summary.json`` and ``metrics.jsonl`` are compared with an uninterrupted run's.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from salt_seg import runs
from salt_seg.adapters import read_adapter_metadata
from salt_seg.cli import main
from salt_seg.training import checkpoints as ck
from salt_seg.training import rundir as rd

from .conftest import synthetic_data, tiny_config

REPO = Path(__file__).resolve().parents[2]
STEPS, VAL_EVERY = (
    12,
    3,
)  # checkpoint units at steps 0, 3, 6, 9, 12; with lr 1e-2 the best is step 6, not the last


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> Path:
    from salt_seg.data.recipes import build_synthetic_shapes

    root = tmp_path_factory.mktemp("kill")
    build_synthetic_shapes(root / "ds", n_cases=6, size=64, depth=10, shots=2)
    cfg = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": 64},
        "adapter": {"name": "salt", "r_lora": 2},
        "data": {
            "path": str(root / "ds"),
            "holdout": "volumes",
            "shots": 2,
            "val": 1,
            "test": 2,
            "augment": True,
        },
        "preprocessing": {"intensity": "minmax", "image_size": 64},
        "train": {
            "steps": STEPS,
            "batch_size": 2,
            "lr": 1e-2,
            "val_every": VAL_EVERY,
            "prompt": "box",
            "overlays": 1,
        },
    }
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    return root / "c.yaml"


@pytest.fixture(scope="module")
def reference(run_config) -> Path:
    """The uninterrupted run (in this process: the CLI gives the same result in a fresh one)."""
    out = run_config.parent / "reference"
    assert (
        main(
            [
                "train",
                "--config",
                str(run_config),
                "--out",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return out


def start(run_config: Path, run: Path, fault: str | None = None) -> subprocess.Popen:
    """``salt-seg train`` in a subprocess: ``--resume`` when ``run`` is a run folder, else ``--out``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    env.pop(ck.FAULT_ENV, None)
    if fault:
        env[ck.FAULT_ENV] = fault
    where = (
        ["--resume", str(run)] if runs.is_run_dir(run) else ["--config", str(run_config), "--out", str(run)]
    )
    cmd = [
        sys.executable,
        "-m",
        "salt_seg",
        "train",
        *where,
        "--no-progress",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def assert_same_run(run: Path, reference: Path) -> None:
    """Final adapter, best checkpoint, summary (but its time) and metrics equal the reference's; no leftovers."""

    def tensors_and_meta(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
        return load_file(path), read_adapter_metadata(path)

    a, meta_a = tensors_and_meta(run / "adapter.safetensors")
    b, meta_b = tensors_and_meta(reference / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert meta_a == meta_b
    summary, ref_summary = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    summary.pop("seconds"), ref_summary.pop("seconds")
    assert summary == ref_summary
    best = ref_summary["best_step"]
    assert meta_a["extra"]["step"] == best  # the final adapter is the best checkpoint
    assert runs.published_steps(run) == runs.published_steps(reference) == sorted({best, STEPS})
    best_a = load_file(runs.unit_path(run, best) / "adapter.safetensors")
    assert all(torch.equal(best_a[k], b[k]) for k in b)
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert (run / "plots" / "val_overlays.png").is_file() and (run / "plots" / "curves.png").is_file()
    left = [p.relative_to(run).as_posix() for p in run.rglob("*") if rd.is_leftover(p.name)]
    assert left == []


def test_reference_run_keeps_the_best_and_the_last_unit(reference) -> None:
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["best_step"] == 6 and summary["steps"] == STEPS  # so that best and last are distinct units
    assert runs.published_steps(reference) == [6, STEPS]
    rows = runs.read_metrics(reference)
    assert [r["step"] for r in rows] == list(range(STEPS + 1))
    assert [r["step"] for r in rows if "val_dice" in r] == [0, 3, 6, 9, 12]
    unit = ck.load_last(reference)
    assert unit.step == STEPS and unit.state["best_step"] == 6
    assert unit.state["metrics_bytes"] == (reference / "metrics.jsonl").stat().st_size


def _same(a, b) -> bool:
    """Equal values, tensors compared exactly, dicts with their keys in the same order, NaN equal to NaN."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


def test_train_state_is_what_state_pt_holds(reference, tmp_path) -> None:
    """``TrainState.to_dict`` writes exactly what a unit's ``state.pt`` holds and ``from_dict`` reads it back; both
    round-trip through ``torch.load(weights_only=True)``."""
    for step in runs.published_steps(reference):
        raw = torch.load(runs.unit_path(reference, step) / "state.pt", weights_only=True)
        state = ck.TrainState.from_dict(raw)
        assert state.step == step and state.best_step == 6 and state.seconds > 0
        assert state.optimizer["state"] and state.scheduler["last_epoch"] == step
        assert _same(state.to_dict(), raw)  # the same keys in the same order, the same values
        torch.save(state.to_dict(), tmp_path / "state.pt")
        again = ck.TrainState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        assert _same(again.to_dict(), raw)
    # a state of every kind: NaN Dice (no validation slices), an fp16 scaler, a fresh RNG state
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    state = ck.TrainState(
        step=7,
        best_val_dice=float("nan"),
        best_step=7,
        bad_validations=2,
        initial_val_dice=float("nan"),
        seconds=1.5,
        metrics_bytes=321,
        optimizer=opt.state_dict(),
        scheduler={"last_epoch": 7, "_last_lr": [1e-3]},
        scaler=scaler | {"_growth_tracker": 3},
        torch_rng=torch.get_rng_state(),
    )
    torch.save(state.to_dict(), tmp_path / "kinds.pt")
    raw = torch.load(tmp_path / "kinds.pt", weights_only=True)
    assert raw["format"] == ck.STATE_FORMAT
    again = ck.TrainState.from_dict(raw)
    assert _same(again.to_dict(), state.to_dict())
    assert (
        again.step == 7
        and again.scaler["_growth_tracker"] == 3
        and again.best_val_dice != again.best_val_dice
    )
    # a unit written before the training time was recorded resumes with 0 s so far
    old = {k: v for k, v in raw.items() if k != "seconds"}
    assert ck.TrainState.from_dict(old).seconds == 0.0


def test_sigkill_between_publishing_and_pruning_resumes_exactly(run_config, reference, tmp_path) -> None:
    """One kill (fast): the second unit (step 3) is published, the superseded step 0 not yet deleted."""
    run = tmp_path / "run"
    rc, err = finish(start(run_config, run, "unit-published:2"))
    assert rc == -signal.SIGKILL, err[-2000:]
    assert runs.published_steps(run) == [0, 3]  # both visible, each whole
    assert not (run / "adapter.safetensors").exists() and not (run / "summary.json").exists()
    rows = runs.read_metrics(run)
    assert rows[-1]["step"] == 3 and "val_dice" in rows[-1]  # the row went in before its checkpoint
    # evaluate/predict --model on the unfinished run take its best checkpoint so far
    best = ck.load_last(run).state["best_step"]
    assert runs.find_adapter(run) == runs.unit_path(run, best) / "adapter.safetensors"
    assert main(["train", "--resume", str(run), "--no-progress", "--device", "cpu", "--threads", "1"]) == 0
    assert_same_run(run, reference)


#: injected kills in the order a run meets them, one process each, all on the same run folder: before the first
#: checkpoint, inside each write of a unit, between publishing a unit (a new best or last) and deleting the ones it
#: supersedes, after a write, and between the final adapter and summary.json
INJECTED = (
    "configured",
    "base-written",
    "initial-validation",
    "unit-adapter-start:1",  # the step-0 unit: its temporary folder is empty
    "unit-adapter:2",  # fresh again: unit 0 published, unit 3 killed with only its adapter written
    "unit-state-half:1",  # unit 3 with half a state.pt
    "unit-state:2",  # unit 3 published, unit 6 whole in its temporary folder but for the folder's sync
    "unit-written:1",  # unit 6 whole, not yet renamed
    "unit-published:1",  # unit 6 (the best) published, 3 not yet deleted
    "unit-pruned:1",  # unit 9 done
    "step:2",
    "exported",  # final adapter written, summary.json not yet
)


@pytest.mark.slow
def test_twenty_kills_at_injected_points_and_random_moments_resume_exactly(
    run_config, reference, tmp_path
) -> None:
    kills = 0
    run = tmp_path / "injected"
    for fault in INJECTED:
        rc, err = finish(start(run_config, run, fault))
        assert rc == -signal.SIGKILL, f"{fault}: {err[-2000:]}"
        kills += 1
        assert runs.is_run_dir(
            run
        )  # every kill leaves a run that --resume takes (config.yaml is written first)
    rc, err = finish(start(run_config, run))
    assert rc == 0, err[-2000:]
    assert_same_run(run, reference)
    assert kills == len(INJECTED) == 12

    # random moments: at a random training step (SIGKILL from inside) or after a random delay (from outside,
    # wherever the process is: importing, writing the base, validating, checkpointing, exporting)
    rng = random.Random(14)
    chains = 0
    kinds = {"step": 0, "delay": 0}
    while kills < 24 or chains < 2:
        run = tmp_path / f"random{chains}"
        for _ in range(40):  # attempts until the run finishes; each resumes the previous one's folder
            kind = "step" if rng.random() < 0.5 else "delay"
            if kind == "step":
                proc = start(run_config, run, f"step:{rng.randint(1, 5)}")
            else:
                proc = start(run_config, run)
                time.sleep(rng.uniform(0.5, 9.0))
                proc.send_signal(signal.SIGKILL)
            rc, err = finish(proc)
            if rc == 0:
                break
            assert rc == -signal.SIGKILL, err[-2000:]
            kills += 1
            kinds[kind] += 1
        assert (run / "summary.json").is_file()
        assert_same_run(run, reference)
        chains += 1
    assert kills >= 24 and kinds["step"] > 0, (kills, kinds)
    print(f"{kills} kills: {len(INJECTED)} injected, {kinds} random, {chains} random chains")


def test_disk_full_is_one_line_and_leaves_a_resumable_run(
    run_config, reference, tmp_path, monkeypatch, capsys
) -> None:
    """ENOSPC in the middle of writing a checkpoint (half a state.pt on the disk): one error line naming the file
    and the cause, exit status 2, and ``--resume`` (once there is space) ends where the uninterrupted run ends."""
    run = tmp_path / "run"
    monkeypatch.setenv(ck.FAULT_ENV, "unit-state-half:3:enospc")
    monkeypatch.setattr(ck, "_arrivals", {})
    rc = main(
        [
            "train",
            "--config",
            str(run_config),
            "--out",
            str(run),
            "--no-progress",
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if not line.startswith("INFO ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("salt-seg train: error: ")
    assert str(run / "checkpoints" / ".tmp-step-000006" / "state.pt") in lines[0]
    assert "No space left on device" in lines[0] and f"--resume {run}" in lines[0]
    assert runs.published_steps(run)[-1] == 3 and not (run / "checkpoints" / ".tmp-step-000006").exists()
    monkeypatch.delenv(ck.FAULT_ENV)
    assert main(["train", "--resume", str(run), "--no-progress", "--device", "cpu", "--threads", "1"]) == 0
    assert_same_run(run, reference)


def test_untrained_adapter_is_a_candidate_for_best(tmp_path) -> None:
    """A learning rate that only harms: the exported adapter is the untrained one (step 0), never a worse one."""
    data = synthetic_data(n_train=8, n_val=4)
    from salt_seg.training.loop import train

    res = train(
        tiny_config(steps=4, val_every=2, lr=1.0, warmup_steps=0), tmp_path / "run", data=data, progress=False
    )
    rows = runs.read_metrics(tmp_path / "run")
    vals = {r["step"]: r["val_dice"] for r in rows if "val_dice" in r}
    assert sorted(vals) == [0, 2, 4] and max(vals[2], vals[4]) < vals[0]
    assert res.best_step == 0 and res.best_val_dice == vals[0] == res.initial_val_dice
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_step"] == 0 and summary["best_val_dice"] == vals[0]
    assert runs.published_steps(tmp_path / "run") == [0, 4]
    final = load_file(tmp_path / "run" / "adapter.safetensors")
    step0 = load_file(runs.unit_path(tmp_path / "run", 0) / "adapter.safetensors")
    last = load_file(runs.unit_path(tmp_path / "run", 4) / "adapter.safetensors")
    assert all(torch.equal(final[k], step0[k]) for k in final)
    assert any(not torch.equal(final[k], last[k]) for k in final)
    assert read_adapter_metadata(tmp_path / "run" / "adapter.safetensors")["extra"]["step"] == 0


def test_resume_refuses_a_damaged_unit_and_truncates_metrics(tmp_path) -> None:
    from salt_seg.training.loop import train

    data = synthetic_data(n_train=8, n_val=4)
    cfg = tiny_config(steps=6, val_every=2)
    run = tmp_path / "run"
    train(cfg, run, data=data, progress=False, stop_after=3)
    assert runs.published_steps(run) == [2] or runs.published_steps(run) == [0, 2]
    rows = runs.read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # step 3 came after the last checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a row cut by a kill
    unit = ck.load_last(run)
    assert unit.step == 2 and unit.state["metrics_bytes"] < (run / "metrics.jsonl").stat().st_size
    # a unit whose state was replaced by another step's is refused with a clear message
    state = dict(unit.state, step=0)
    torch.save(state, unit.path / "state.pt")
    with pytest.raises(ValueError, match=r"step-000002: damaged checkpoint \(state step 0, adapter step 2\)"):
        train(cfg, run, data=data, progress=False, resume=True)
    torch.save(dict(unit.state), unit.path / "state.pt")
    res = train(cfg, run, data=data, progress=False, resume=True)
    assert res.steps_done == 6
    assert [r["step"] for r in runs.read_metrics(run)] == list(range(7))


def test_out_on_a_run_says_resume_and_leftovers_count_as_empty(tmp_path) -> None:
    run = tmp_path / "run"
    rd.prepare_run_dir(run, resume=False, config={"a": 1})
    assert runs.is_run_dir(run)
    with pytest.raises(FileExistsError, match=f"continue it with --resume {run}"):
        rd.prepare_run_dir(run, resume=False, config={"a": 1})
    killed = tmp_path / "killed"  # killed while writing config.yaml: only its temporary file
    killed.mkdir()
    (killed / ".config.yaml.tmp123").write_text("a: ")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        rd.prepare_run_dir(killed, resume=True)
    rd.prepare_run_dir(killed, resume=False, config={"a": 1})
    assert sorted(p.name for p in killed.iterdir()) == ["config.yaml"]


def test_write_errors_in_the_run_dir_become_one_line(tmp_path) -> None:
    run = tmp_path / "run"
    rd.prepare_run_dir(run, resume=False, config={"a": 1})
    with pytest.raises(runs.RunDirWriteError) as info, rd.writing(run):
        raise OSError(errno.EROFS, "Read-only file system", str(run / "metrics.jsonl"))
    assert str(info.value) == (
        f"{run / 'metrics.jsonl'}: cannot write (Read-only file system); fix that, then continue with --resume {run}"
    )
    with (
        pytest.raises(runs.RunDirWriteError, match=f"^{run}: cannot write \\(No space left on device\\)"),
        rd.writing(run),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")  # a failed write() names no file
    outside = tmp_path / "dataset.nii.gz"  # not the run directory's fault: passes through unchanged
    with pytest.raises(PermissionError) as info, rd.writing(run):
        raise PermissionError(errno.EACCES, "Permission denied", str(outside))
    assert not isinstance(info.value, runs.RunDirWriteError)


def test_a_run_of_the_old_layout_is_refused_clearly(tmp_path) -> None:
    (tmp_path / "checkpoints" / "last").mkdir(parents=True)
    with pytest.raises(ValueError, match="older salt_seg"):
        ck.load_last(tmp_path)
    assert ck.load_last(tmp_path / "nothing") is None  # no unit yet: resume from step 0


def test_fault_hook_counts_arrivals(monkeypatch) -> None:
    monkeypatch.setattr(ck, "_arrivals", {})
    monkeypatch.setenv(ck.FAULT_ENV, "somewhere:2:enospc")
    ck.fault("elsewhere")
    ck.fault("somewhere", "/x")  # first arrival: nothing
    with pytest.raises(OSError, match="No space left on device") as info:
        ck.fault("somewhere", "/x")
    assert info.value.filename == "/x"
    ck.fault("somewhere", "/x")  # third: nothing
