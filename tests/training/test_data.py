"""``train``'s split errors speak the config's words (issue 14): ``data.guard_mm``, ``data.holdout``."""

from __future__ import annotations

from pathlib import Path

import yaml

from salt_seg.cli import main


def test_train_names_the_config_key_when_the_split_cannot_be_drawn(tmp_path: Path, capsys) -> None:
    from salt_seg.data.recipes import build_synthetic_shapes

    data = tmp_path / "ds"
    build_synthetic_shapes(data, n_cases=4, size=32, depth=8, shots=1)
    cfg = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": 64},
        "adapter": {"name": "salt", "r_lora": 2},
        "data": {"path": str(data), "holdout": "slices", "shots": 1, "guard_mm": 500},
        "preprocessing": {"intensity": "minmax", "image_size": 64},
        "train": {"steps": 1, "batch_size": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(
        ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "data.guard_mm" in err[0] and "guard_mm," not in err[0].replace("data.guard_mm", "")
    assert "level='volume'" not in err[0] and "protocol='" not in err[0]
    # refused before anything trained: --out is left as it was, so the corrected command can use it again
    assert not (tmp_path / "run").exists()
    cfg["data"]["guard_mm"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(
        ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    assert rc == 0 and (tmp_path / "run" / "adapter.safetensors").is_file()
