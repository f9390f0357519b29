"""``salt-seg evaluate`` end to end on small generated NIfTI folders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from salt_seg.cli import main

SPACING = (0.5, 2.0, 3.0)
SHAPE = (30, 30, 24)
DIAG = math.sqrt((30 * 0.5) ** 2 + (30 * 2.0) ** 2 + (24 * 3.0) ** 2)


def cube_map(shift: int = 0, axis: int = 0, with_class_2: bool = True) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[10:20, 10:20, 10:20] = 1
    m = np.roll(m, shift, axis=axis)
    if with_class_2:
        m[2:5, 2:5, 2:5] = 2
    return m


@pytest.fixture
def folders(tmp_path: Path, nifti) -> tuple[Path, Path]:
    """c1 perfect; c2 shifted 2 voxels along axis 0, no class 2 anywhere; c3 shifted along axis 2, class 2 missed."""
    gt, pred = tmp_path / "data" / "labelsTr", tmp_path / "pred"
    nifti(gt / "c1.nii.gz", cube_map(), SPACING)
    nifti(pred / "c1.nii.gz", cube_map(), SPACING)
    nifti(gt / "c2.nii.gz", cube_map(with_class_2=False), SPACING)
    nifti(pred / "c2.nii.gz", cube_map(2, 0, with_class_2=False), SPACING)
    nifti(gt / "c3.nii.gz", cube_map(), SPACING)
    nifti(pred / "c3.nii.gz", cube_map(2, 2, with_class_2=False), SPACING)
    return pred, gt


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folders_end_to_end(folders: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    summary = {(r["level"], r["class_id"]): r for r in read_csv(out / "summary.csv")}
    v1 = summary[("volume", "1")]
    assert float(v1["dice_mean"]) == pytest.approx((1.0 + 0.8 + 0.8) / 3)
    assert float(v1["hd95_mm_mean"]) == pytest.approx((0.0 + 1.0 + 6.0) / 3)  # 2 voxels x 0.5 mm / x 3 mm
    v2 = summary[("volume", "2")]
    assert (v2["n"], float(v2["dice_mean"]), v2["both_empty"], v2["pred_empty"]) == ("2", 0.5, "1", "1")
    assert float(v2["hd95_mm_mean"]) == pytest.approx(DIAG / 2)  # c1: 0, c3: the penalty
    assert (v2["hd95_mm_present_mean"], v2["hd95_mm_present_std"]) == ("0.0", "")  # c1 only; n=1: no std
    per_volume = read_csv(out / "per_volume.csv")
    assert [(r["case"], r["class_id"], r["status"]) for r in per_volume] == [
        ("c1", "1", "both_present"),
        ("c1", "2", "both_present"),
        ("c2", "1", "both_present"),
        ("c2", "2", "both_empty"),
        ("c3", "1", "both_present"),
        ("c3", "2", "pred_empty"),
    ]
    assert per_volume[3]["dice"] == "" and float(per_volume[5]["hd95_mm"]) == pytest.approx(DIAG)
    per_slice = read_csv(out / "per_slice.csv")
    assert len(per_slice) == 3 * 2 * SHAPE[2]
    # c3 class 1 along axis 2: slices 10-11 GT only, 12-19 both, 20-21 prediction only
    c3 = {int(r["slice_index"]): r["status"] for r in per_slice if r["case"] == "c3" and r["class_id"] == "1"}
    assert [c3[i] for i in (9, 10, 11, 12, 19, 20, 21, 22)] == [
        "both_empty", "pred_empty", "pred_empty", "both_present", "both_present", "gt_empty", "gt_empty",
        "both_empty",
    ]  # fmt: skip
    s1 = summary[("slice", "1")]
    # slices with class 1: c1 10 perfect; c2 10 at Dice 0.8 (shift in-plane); c3 8 perfect + 4 one-sided
    assert (s1["n"], s1["both_present"], s1["pred_empty"], s1["gt_empty"]) == ("32", "28", "2", "2")
    assert float(s1["dice_mean"]) == pytest.approx((10 + 8 + 8) / 32)
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["class_ids"] == [1, 2] and doc["cases"] == ["c1", "c2", "c3"]
    assert doc["settings"]["nsd_tolerance_mm"] == 2.0
    assert doc["per_case"]["c2"]["volume"]["1"]["dice"]["mean"] == pytest.approx(0.8)
    assert doc["summary"]["volume"]["2"]["counts"]["both_empty"] == 1
    assert len(doc["scores"]) == 6 + 144
    per_case = read_csv(out / "per_case.csv")
    assert {(r["case"], r["level"], r["class_id"]) for r in per_case} >= {("c3", "slice", "all")}
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "3 case(s), classes 1, 2"
    row = next(line for line in printed.splitlines() if line.startswith("volume  1"))
    assert row.split()[2:4] == ["3", "0.867"]


def test_class_names_split_and_per_volume_only(
    folders: tuple[Path, Path], tmp_path: Path, make_split, capsys
) -> None:
    pred, gt = folders
    (gt.parent / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}})
    )
    split = make_split(tmp_path / "split.json", [("c2", None)])
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--split", str(split)]
    assert main([*argv, "--classes", "liver", "--per-volume", "--nsd-tolerance", "0.75"]) == 0
    rows = read_csv(out / "per_volume.csv")
    assert [(r["case"], r["class_name"]) for r in rows] == [("c2", "liver")]
    assert float(rows[0]["nsd"]) == pytest.approx(324 / 488)  # hand count in tests/evaluation/test_metrics.py
    assert not (out / "per_slice.csv").exists()
    printed = capsys.readouterr().out
    assert "NSD@0.75mm" in printed and "volume  1 liver" in printed and "split" in printed.splitlines()[0]


def test_slice_level_split_scores_only_its_test_slices(
    folders: tuple[Path, Path], tmp_path: Path, make_split, capsys
) -> None:
    pred, gt = folders
    split = make_split(tmp_path / "split.json", [("c3", [9, 10, 12, 20])], level="slice", axis=2)
    out = tmp_path / "out"
    assert (
        main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--split", str(split), "--out", str(out)])
        == 0
    )
    rows = read_csv(out / "per_slice.csv")
    assert [(r["case"], r["class_id"], r["slice_index"], r["status"]) for r in rows] == [
        ("c3", "1", "9", "both_empty"),
        ("c3", "1", "10", "pred_empty"),
        ("c3", "1", "12", "both_present"),
        ("c3", "1", "20", "gt_empty"),
        *[("c3", "2", i, "both_empty") for i in ("9", "10", "12", "20")],
    ]
    assert read_csv(out / "per_volume.csv") == []  # the volume also holds training slices: not scored
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["split_test_part"] == {"c3": [9, 10, 12, 20]} and doc["settings"]["slice_axis"] == 2
    dice = doc["summary"]["slice"]["1"]["dice"]
    assert (dice["mean"], dice["n"]) == (pytest.approx(1 / 3), 3)  # 0 (missed), 1, 0 (false positive)
    assert "1 case(s) restricted to the split's test slices" in capsys.readouterr().out
    assert (
        main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--split", str(split), "--per-volume"]) == 2
    )
    assert "score it per slice (drop --per-volume)" in capsys.readouterr().err
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--split", str(split), "--slice-axis", "0"]
    assert main(argv) == 2
    assert "test slices lie along axis 2, not the slice axis 0" in capsys.readouterr().err


def test_default_out_is_inside_pred(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--classes", "2", "--per-slice"]) == 0
    rows = read_csv(pred / "evaluation" / "summary.csv")
    assert [(r["level"], r["class_id"], r["dice_mean"]) for r in rows] == [
        ("slice", "2", "0.5"),
        ("slice", "all", "0.5"),
    ]


def test_shape_mismatch_is_one_line_naming_the_file(folders: tuple[Path, Path], nifti, capsys) -> None:
    pred, gt = folders
    nifti(pred / "c2.nii.gz", np.zeros((30, 30, 23), np.uint8), SPACING)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"salt-seg evaluate: error: {pred / 'c2.nii.gz'}: shape (30, 30, 23) differs")


def test_missing_prediction_errors_or_scores_empty(
    folders: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    pred, gt = folders
    (pred / "c3.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "c3.nii.gz: no prediction for case 'c3'" in err and "--missing empty" in err
    out = tmp_path / "out"
    assert (
        main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--missing", "empty", "--out", str(out)]) == 0
    )
    rows = [r for r in read_csv(out / "per_volume.csv") if r["case"] == "c3"]
    assert [(r["status"], r["dice"]) for r in rows] == [("pred_empty", "0.0"), ("pred_empty", "0.0")]
    assert json.loads((out / "evaluation.json").read_text())["missing_predictions"] == ["c3"]
    assert "1 missing prediction(s) scored as empty" in capsys.readouterr().out


def test_user_errors_exit_2(folders: tuple[Path, Path], tmp_path: Path, make_split, capsys) -> None:
    pred, gt = folders
    split = make_split(tmp_path / "split.json", [("c9", None)])
    cases = [
        (["--split", str(split)], "test case(s) c9 have no ground truth"),
        (["--nsd-tolerance", "-1"], "--nsd-tolerance: nsd_tolerance_mm must be finite and >= 0"),
        (["--classes", "liver"], "no dataset.json was found"),
    ]
    for extra, message in cases:
        assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(gt)]) == 2
    assert "nope: prediction folder is not a directory" in capsys.readouterr().err
