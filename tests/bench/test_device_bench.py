"""bench/device.sh's CPU mode (issue 16, item 4): the prepared GPU benchmark runs, with the tiny variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.test_baselines import BENCH, _load


@pytest.fixture(autouse=True)
def _svd_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALT_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "svd_cache"))


def test_cpu_tiny_mode_measures_every_part(tmp_path: Path) -> None:
    bench = _load("device_bench")
    res = bench.main(["--cpu-tiny", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == res
    assert res["device"] == "cpu" and res["variant"] == "tiny" and res["grad_checkpointing"] is True
    for name in ("salt", "lora_r4", "full"):
        row = res["train"][name]
        assert row["status"] == "ok" and row["step_s_median"] > 0 and row["trainable_params"] > 0
    for name in ("galore", "q-galore"):  # full fine-tuning with the low-memory optimizers
        assert res["train"][name]["status"] == "ok"
        assert res["train"][name]["trainable_params"] == res["train"]["full"]["trainable_params"]
        # GaLore keeps Adam's moments of the projected matrices at rank 128 of 192: less state than AdamW's
        assert 0 < res["train"][name]["optimizer_state_mib"] < res["train"]["full"]["optimizer_state_mib"]
    assert res["train"]["lora_r4"]["vs_lora_r4"] == 1.0
    assert res["inference"]["predict_slices_per_s"] > 0 and res["inference"]["click_ms_median"] > 0


@pytest.mark.slow
def test_the_one_command_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "device.json"
    subprocess.run(["bash", str(BENCH / "device.sh"), "--cpu-tiny", "--json", str(out)], check=True, env=env)
    assert json.loads(out.read_text())["train"]["salt"]["status"] == "ok"
