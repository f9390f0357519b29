"""`salt-seg train` through the CLI: a real on-disk dataset, config errors, seeds, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from salt_seg.cli import main


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory) -> Path:
    from salt_seg.data.recipes import build_synthetic_shapes

    out = tmp_path_factory.mktemp("shapes") / "ds"
    build_synthetic_shapes(out, n_cases=6, size=64, depth=10, shots=2)
    return out


def write_config(path: Path, dataset: Path, **train) -> Path:
    cfg = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": 128},
        "adapter": {"name": "salt", "r_lora": 2},
        "data": {
            "path": str(dataset),
            "holdout": "volumes",
            "shots": 2,
            "val": 1,
            "test": 2,
            "augment": True,
        },
        "preprocessing": {"intensity": "minmax", "image_size": 128},
        "train": {"steps": 3, "batch_size": 2, "val_every": 3, "prompt": "box", "overlays": 1, **train},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_cli_on_a_dataset_writes_a_complete_run(tmp_path, shapes_dataset, capsys) -> None:
    cfg = write_config(tmp_path / "c.yaml", shapes_dataset)
    rc = main(
        ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress", "--threads", "2"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3 and saved["data"]["path"] == str(shapes_dataset)
    assert saved["train"]["lr"] == pytest.approx(1e-4)  # defaults are filled in
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["test"]) == 2
    prov = json.loads((run / "provenance.json").read_text())
    assert len(prov["dataset_hash"]) == 64
    from salt_seg.adapters import read_adapter_metadata

    meta = read_adapter_metadata(run / "adapter.safetensors")
    assert "ellipsoid" in json.dumps(meta)  # the dataset's class names travel with the adapter


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key train.'lrr'"),
        ("train.steps=many", "train.steps: expected an integer"),
        ("adapter.name=lorax", "adapter: unknown adapter"),
        ("model.checkpoint=/nonexistent/sam.pth", "/nonexistent/sam.pth"),
        ("data.path=", "data.path is empty"),
    ],
)
def test_config_errors_are_one_line(tmp_path, shapes_dataset, capsys, override: str, message: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", shapes_dataset)
    rc = main(
        ["train", "--config", str(cfg), "--set", override, "--out", str(tmp_path / "run"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def test_empty_dataset_is_a_clear_error(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = write_config(tmp_path / "c.yaml", empty)
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "empty" in err


def test_resume_refuses_a_changed_base(tmp_path, shapes_dataset, capsys) -> None:
    cfg = write_config(tmp_path / "c.yaml", shapes_dataset, steps=4, val_every=2)
    from salt_seg.training.config import load_config
    from salt_seg.training.loop import train

    train(load_config(cfg), tmp_path / "run", progress=False, stop_after=2)
    # swap the run's base weights for different ones: the adapter no longer belongs to this base
    from safetensors.torch import load_file, save_file

    base = load_file(tmp_path / "run" / "base.safetensors")
    base["image_encoder.patch_embed.proj.weight"] += 1.0
    save_file(base, tmp_path / "run" / "base.safetensors")
    rc = main(["train", "--resume", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "base" in err.lower(), err


def test_torchrun_two_cpu_processes(tmp_path, shapes_dataset) -> None:
    cfg = write_config(tmp_path / "c.yaml", shapes_dataset, steps=2, val_every=2, batch_size=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "salt_seg",
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]  # one row per step: only rank 0 writes
    for r in steps:
        assert r["rank_samples"] == [2, 2]  # the global batch of 4 is split in halves
    # only rank 0 wrote files: no temporary or duplicate files anywhere in the run
    names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert not [n for n in names if ".tmp" in n]
    assert (run / "adapter.safetensors").is_file()
    # the reduced validation Dice equals a single-process validation of the saved adapter
    from salt_seg.adapters import load_adapter
    from salt_seg.model.checkpoint import load_base_model
    from salt_seg.training.config import load_config
    from salt_seg.training.data import build_train_data
    from salt_seg.training.distributed import DistInfo
    from salt_seg.training.loop import validate

    c = load_config(cfg)
    data = build_train_data(c, c.preprocessing)
    model, _ = load_base_model("tiny", run / "base.safetensors", image_size=128)
    load_adapter(run / "checkpoints" / "step-000002" / "adapter.safetensors", model, progress=False)
    dice, _, _ = validate(model, data, c, "cpu", DistInfo())
    assert dice == pytest.approx(rows[-1]["val_dice"], abs=1e-6)


def test_evaluate_model_scores_the_runs_test_slices(tmp_path, shapes_dataset, capsys) -> None:
    cfg = write_config(tmp_path / "c.yaml", shapes_dataset)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    for overlap in ("label_map", "independent"):
        out = tmp_path / f"eval_{overlap}"
        rc = main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "run"),
                "--prompt",
                "box",
                "--overlap",
                overlap,
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        assert rc == 0, capsys.readouterr().err
        doc = json.loads((out / "evaluation.json").read_text())
        split = json.loads((tmp_path / "run" / "split.json").read_text())
        assert sorted(doc["cases"]) == sorted(e["case"] for e in split["test"])
        dice = doc["summary"]["volume"]["all"]["dice"]
        assert dice["n"] > 0 and 0.0 <= dice["mean"] <= 1.0
    rc = main(["evaluate", "--model", str(tmp_path / "run"), "--prompt", "auto", "--device", "cpu"])
    assert rc == 2 and "no class tokens" in capsys.readouterr().err


# --- issue 14: split errors and warnings under train name the config keys -------------------------------------------
def _atlas_config(tmp_path: Path, **data) -> Path:
    from ..data.conftest import write_atlas

    root = write_atlas(tmp_path / "atlas")  # one volume; 'top' (2) only in its ten highest axial slices
    cfg = write_config(tmp_path / "c.yaml", root)
    doc = yaml.safe_load(cfg.read_text())
    doc["data"].update({"holdout": "slices", "shots": 4, "val": 0.2, "test": 0.4, "guard_mm": 2.0, **data})
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.guard_mm=30",
            "lower data.guard_mm, data.val or data.test, or split whole volumes (data.holdout: volumes)",
        ),
        (
            "data.holdout=volumes",
            "cannot draw 4 training case(s) (data.shots: 4): only 0 of 1 labelled case(s) are left after val and "
            "test; lower data.shots, data.val or data.test, or hold out slices instead of whole volumes "
            "(data.holdout: slices)",
        ),
        (
            "data.val=2",
            "slice-level splits (data.holdout: slices) take data.val as a fraction in [0, 1), got 2",
        ),
        ("preprocessing.axis=5", "error: preprocessing.axis must be 0, 1 or 2, got 5"),
        ("adapter.r_lora=0", "error: adapter.r_lora must be an integer >= 1, got 0"),
    ],
)
def test_train_errors_name_the_config_keys(tmp_path, capsys, override: str, message: str) -> None:
    cfg = _atlas_config(tmp_path)
    rc = main(
        ["train", "--config", str(cfg), "--set", override, "--out", str(tmp_path / "run"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert message in err, err
    for internal in ("guard_mm=", "level=", "holdout=", "AdapterConfig.", "Preprocessing."):
        assert internal not in err


def test_train_split_warns_in_config_keys_when_a_class_is_in_no_training_slice(tmp_path, caplog) -> None:
    from salt_seg.training.config import load_config
    from salt_seg.training.data import build_train_data

    cfg = load_config(_atlas_config(tmp_path, cache=False), ["train.seed=0"])
    with caplog.at_level("WARNING", logger="salt_seg.data.split"):
        data = build_train_data(cfg, cfg.preprocessing)
    [message] = [r.message for r in caplog.records if r.name == "salt_seg.data.split"]
    assert message.startswith("class(es) 2 (top) appear in val or test slices but in no training slice")
    assert (
        "split along axis 0 (sagittal, preprocessing.axis: 0) or 1 (coronal, preprocessing.axis: 1)"
        in message
    )
    assert data.split["meta"]["classes_missing_from_train"] == [2]
    assert all(max(e["slices"]) < 45 for e in data.split["train"])
