"""``train``'s split errors speak the config's words (issue 14): ``data.guard_mm``, ``data.holdout``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from salt_seg.cli import main
from salt_seg.training.data import in_config_words


@pytest.mark.parametrize(
    ("library", "config"),
    [
        (
            "lower guard_mm, val or test, or split whole volumes (level='volume')",
            "lower data.guard_mm, data.val or data.test, or split whole volumes (data.holdout: volumes)",
        ),
        (
            "lower guard_mm to 4 or less, lower shots, or use protocol='block'",
            "lower data.guard_mm to 4 or less, lower data.shots, or use data.protocol: block",
        ),
        ("(shots are dealt round-robin): raise shots", "(shots are dealt round-robin): raise data.shots"),
        ("data.guard_mm must be >= 0", "data.guard_mm must be >= 0"),  # already a config key: unchanged
    ],
)
def test_split_hints_in_config_words(library: str, config: str) -> None:
    assert in_config_words(library) == config


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
