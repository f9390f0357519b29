"""SALT-layout masks named ``<image>_mask.png`` (and the other namings) pair with their images (issue 14), so the
real defects - a mask of the wrong size, a missing mask, a corrupt PNG - are the ones reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from salt_seg.data import check_dataset, detect_format, load_dataset
from salt_seg.data.errors import DataError

from .conftest import write_picture


def _salt(
    root: Path, mask_names: dict[str, str | None], sizes: dict[str, tuple[int, int]] | None = None
) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for stem, mask_name in mask_names.items():
        write_picture(root / "images" / f"{stem}.png", rng.integers(0, 255, (16, 20, 3)).astype(np.uint8))
        if mask_name is not None:
            mask = np.zeros((sizes or {}).get(stem, (16, 20)), np.uint8)
            mask[4:9, 3:15] = 255
            write_picture(root / "masks" / mask_name, mask)
        rows.append({"imgs": f"{stem}.png", "split": "train"})
    with open(root / "data_split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["imgs", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.mark.parametrize(
    "mask_name", ["a_mask.png", "a.png", "a_Mask.png", "a_seg.png", "a_segmentation.png", "a_gt.png", "a.tif"]
)
def test_salt_mask_namings_pair(tmp_path: Path, mask_name: str) -> None:
    root = _salt(tmp_path / "d", {"a": mask_name})
    ds = load_dataset(root)
    assert [(c.case_id, c.label.name) for c in ds.cases] == [("a", mask_name)]
    img = ds.load_image(ds.cases[0])
    assert set(np.unique(ds.load_label(ds.cases[0], img).array).tolist()) == {0, 1}


def test_only_true_problems_are_reported(tmp_path: Path) -> None:
    root = _salt(
        tmp_path / "d",
        {"ok": "ok_mask.png", "small": "small_mask.png", "gone": None, "broken": "broken_mask.png"},
        sizes={"small": (8, 10)},
    )
    (root / "masks" / "broken_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = check_dataset(load_dataset(root, strict=False))
    text = "\n".join(report.problems)
    assert "no mask for image ok.png" not in text and "no mask for image small.png" not in text
    assert f"{root / 'masks'}: no mask for image gone.png" in text
    assert sum("no mask for image" in p for p in report.problems) == 1
    assert any(
        "small_mask.png: label shape (10, 8, 1) does not match image shape (20, 16, 1)" in p
        for p in report.problems
    ), text
    assert any("broken_mask.png" in p and "not a readable image" in p for p in report.problems), text
    assert len(report.problems) == 3, text


def test_two_candidate_masks_are_a_problem_not_a_guess(tmp_path: Path) -> None:
    root = _salt(tmp_path / "d", {"a": "a_mask.png"})
    write_picture(root / "masks" / "a_seg.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(DataError, match=r"several masks for image a\.png: a_mask\.png, a_seg\.png"):
        load_dataset(root)


def test_malformed_dataset_json_names_the_json_error(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text('{\n  "name": "x",\n  "labels": {"background": 0,}\n}\n')
    with pytest.raises(DataError) as info:
        detect_format(root)
    assert str(info.value) == (
        f"{root / 'dataset.json'}: invalid JSON (Expecting property name enclosed in double quotes at line 3)"
    )
    json.loads('{"ok": 1}')  # the message is json's own wording
