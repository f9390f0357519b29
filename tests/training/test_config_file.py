"""A run folder's ``config.yaml`` holds every setting the run used, defaults included (issue 14)."""

from __future__ import annotations

from pathlib import Path

import yaml

from salt_seg.adapters import AdapterConfig
from salt_seg.cli import main
from salt_seg.configio import from_dict
from salt_seg.preprocessing import Preprocessing


def test_config_yaml_holds_every_default_and_resumes(tmp_path: Path) -> None:
    from salt_seg.data.recipes import build_synthetic_shapes

    data = tmp_path / "ds"
    build_synthetic_shapes(data, n_cases=4, size=32, depth=8, shots=1)
    cfg = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": 64},
        "adapter": {"name": "salt", "r_lora": 2},
        "data": {"path": str(data), "holdout": "slices", "shots": 1, "guard_mm": 0},
        "preprocessing": {"intensity": "minmax"},
        "train": {"steps": 2, "batch_size": 1, "val_every": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    args = ["--no-progress", "--threads", "1"]
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), *args]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    adapter_fields = set(AdapterConfig(name="salt").to_dict())
    assert set(saved["adapter"]) == adapter_fields and saved["adapter"]["r_lora"] == 2
    assert saved["adapter"]["reg_weight"] == from_dict(AdapterConfig, {"name": "salt"}).reg_weight
    # every preprocessing setting but the two a run derives (classes from the dataset, prompt mode from the prompt)
    record_fields = set(Preprocessing().to_dict()) - {"classes", "prompt_mode"}
    assert set(saved["preprocessing"]) == record_fields
    assert saved["preprocessing"]["image_size"] == 64 and saved["preprocessing"]["intensity"] == "minmax"
    assert saved["train"]["warmup_steps"] is not None and saved["data"]["protocol"] == "block"
    # the full file is the run's config: resuming the finished run accepts it
    assert main(["train", "--resume", str(run), *args]) == 0
