"""The demo reuses a finished training run only when it was made with the same settings."""

from __future__ import annotations

from pathlib import Path

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
    (run / rd.RUN_MARKER).write_text("{unreadable: [")
    assert not _finished_with(run, cfg)
    assert not _finished_with(tmp_path / "missing", cfg)
