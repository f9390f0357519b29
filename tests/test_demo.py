"""The demo reuses a finished training run only when it was made with the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from salt_seg import runs
from salt_seg.demo import _finished_with
from salt_seg.training import rundir as rd
from salt_seg.training.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "builtin_salt.yaml"


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, ["train.steps=7"])
    run = tmp_path / "run_salt"
    run.mkdir()
    rd.write_config(run, cfg.to_dict())
    assert not _finished_with(run, cfg)  # not finished: no summary yet
    (run / "summary.json").write_text("{}")
    assert _finished_with(run, cfg)
    assert not _finished_with(run, load_config(CONFIG, ["train.steps=8"]))  # other settings
    assert not _finished_with(run, load_config(CONFIG, ["train.steps=7", "train.lr=0.5"]))
    (run / runs.RUN_MARKER).write_text("{unreadable: [")
    assert not _finished_with(run, cfg)
    assert not _finished_with(tmp_path / "missing", cfg)


def test_the_unet_reference_is_printed_only_for_the_split_it_was_measured_on(tmp_path: Path, capsys) -> None:
    import json

    from salt_seg.demo import unet_reference

    ref = json.loads(
        (Path(__file__).resolve().parents[1] / "salt_seg/assets/demo_reference.json").read_text()
    )
    split = {"version": 1, "kind": "salt_seg.split", "dataset": "mni152-tissue", **ref["split"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    unet = unet_reference(tmp_path / "split.json")
    assert unet is not None and sorted(unet) == [1, 2, 3] and all(0.5 < v < 1 for v in unet.values())
    other = json.loads(json.dumps(split))
    other["test"][0]["slices"] = other["test"][0]["slices"][1:]
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert unet_reference(tmp_path / "other.json") is None


@pytest.mark.slow
def test_the_demo_draws_the_split_the_unet_reference_was_measured_on(tmp_path: Path) -> None:
    """The recorded U-Net figures stay the demo's: the demo's config still draws exactly their split."""
    import json

    from salt_seg.data import load_dataset, prepare_dataset
    from salt_seg.training.data import build_train_data

    ref = json.loads(
        (Path(__file__).resolve().parents[1] / "salt_seg/assets/demo_reference.json").read_text()
    )
    data = tmp_path / "mni152-tissue"
    prepare_dataset("mni152-tissue", data)
    cfg = load_config(CONFIG, [f"data.path={data}"])
    split = build_train_data(cfg, cfg.preprocessing).split
    assert load_dataset(data).cases
    assert {k: split[k] for k in ref["split"]} == ref["split"]
