"""Pairing, reading with geometry checks, split / dataset.json parsing and atomic writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from salt_seg.evaluation import files


def test_case_names_and_listing(tmp_path: Path, nifti) -> None:
    assert files.case_name("a/liver_003.nii.gz") == "liver_003"
    assert files.case_name("b.nii") == "b"
    assert files.case_name("notes.txt") is None and files.case_name(".nii.gz") is None
    label = np.zeros((4, 4, 4), np.uint8)
    nifti(tmp_path / "d" / "b.nii.gz", label)
    nifti(tmp_path / "d" / "a.nii", label)
    (tmp_path / "d" / "readme.txt").write_text("x")
    assert list(files.list_cases(tmp_path / "d")) == ["a", "b"]
    nifti(tmp_path / "d" / "a.nii.gz", label)
    with pytest.raises(ValueError, match=r"a.nii.gz: case name 'a' also used by a.nii"):
        files.list_cases(tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .nii/.nii.gz files"):
        files.list_cases(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        files.list_cases(tmp_path / "nope")


def test_split_test_part(tmp_path: Path, make_split) -> None:
    split = make_split(tmp_path / "split.json", [("c1", None), ("c2", None)])
    assert files.read_split_test_part(split) == ({"c1": None, "c2": None}, 2)
    sliced = make_split(tmp_path / "slices.json", [("atlas", [40, 41, 42])], level="slice", axis=0)
    assert files.read_split_test_part(sliced) == ({"atlas": [40, 41, 42]}, 0)
    empty = make_split(tmp_path / "empty.json", [])
    with pytest.raises(ValueError, match="empty.json: the split's test part is empty"):
        files.read_split_test_part(empty)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"test": ["c1"]}))
    with pytest.raises(ValueError, match="plain.json: not a salt_seg split file"):
        files.read_split_test_part(plain)
    with pytest.raises(FileNotFoundError, match="missing.json: split file not found"):
        files.read_split_test_part(tmp_path / "missing.json")


def test_label_names_both_formats_and_class_parsing(tmp_path: Path) -> None:
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "Liver": 1, "spleen": 2, "both": [1, 2]}}))
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "Liver", "2": "spleen"}}))
    names = {0: "background", 1: "Liver", 2: "spleen"}
    assert files.read_label_names(v2) == names
    assert files.read_label_names(msd) == names
    assert files.parse_class_spec("spleen, liver,2", names) == [2, 1]
    assert files.parse_class_spec("3,1") == [3, 1]
    with pytest.raises(
        ValueError, match="unknown class 'kidney'; dataset.json has background, liver, spleen"
    ):
        files.parse_class_spec("kidney", names)
    with pytest.raises(ValueError, match="no dataset.json was found"):
        files.parse_class_spec("liver")
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text("{}")
    assert files.find_dataset_json(tmp_path / "labelsTr") == tmp_path / "dataset.json"


def test_arrays_come_back_ras_canonical_with_permuted_spacing(tmp_path: Path, nifti) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    # voxel axis 0 runs along world y (0.5 mm), axis 1 along world x (2 mm)
    swapped = np.array([[0, 2.0, 0, 0], [0.5, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    g = nifti(tmp_path / "gt" / "c.nii.gz", arr, affine=swapped)
    pred, gt, spacing = files.load_pair(None, g)
    assert np.array_equal(gt, arr.transpose(1, 0, 2)) and spacing == (2.0, 0.5, 3.0) and not pred.any()
    # a prediction stored LAS (x flipped) on the same physical grid as an RAS ground truth matches
    ras = nifti(tmp_path / "gt" / "r.nii.gz", arr, affine=np.diag([0.5, 2.0, 3.0, 1.0]))
    las_affine = np.diag([-0.5, 2.0, 3.0, 1.0])
    las_affine[0, 3] = 0.5  # voxel 1 of the flipped file sits where voxel 0 of the RAS one does
    las = nifti(tmp_path / "pred" / "r.nii.gz", arr[::-1].copy(), affine=las_affine)
    pred, gt, spacing = files.load_pair(las, ras)
    assert np.array_equal(pred, gt) and np.array_equal(gt, arr) and spacing == (0.5, 2.0, 3.0)


def test_load_pair_checks_geometry(tmp_path: Path, nifti) -> None:
    gt = np.zeros((6, 5, 4), np.uint8)
    gt[1:3, 1:3, 1] = 2
    g = nifti(tmp_path / "gt" / "c.nii.gz", gt)
    p = nifti(tmp_path / "pred" / "c.nii.gz", gt.astype(np.float32))  # whole-number floats are fine
    pred, ref, spacing = files.load_pair(p, g)
    assert np.array_equal(pred, ref) and pred.dtype.kind == "i" and spacing == (0.5, 2.0, 3.0)
    empty, ref, _ = files.load_pair(None, g)
    assert not empty.any() and ref.sum() == 8
    bad_shape = nifti(tmp_path / "pred" / "s.nii.gz", gt[:5])
    with pytest.raises(
        ValueError, match=r"s.nii.gz: shape \(5, 5, 4\) differs from ground truth .*\(6, 5, 4\)"
    ):
        files.load_pair(bad_shape, g)
    moved = np.diag([0.5, 2.0, 3.0, 1.0])
    moved[0, 3] = 1.0
    bad_affine = nifti(tmp_path / "pred" / "a.nii.gz", gt, affine=moved)
    with pytest.raises(ValueError, match=r"a.nii.gz: affine differs from ground truth .*max difference 1\)"):
        files.load_pair(bad_affine, g)
    soft = nifti(tmp_path / "pred" / "f.nii.gz", gt * 0.3)  # 0.6: a probability, not a label
    with pytest.raises(ValueError, match="f.nii.gz: label values are not integers"):
        files.load_pair(soft, g)
    truncated = tmp_path / "pred" / "t.nii.gz"
    truncated.write_bytes(p.read_bytes()[:60])
    with pytest.raises(ValueError, match="t.nii.gz: not a readable NIfTI"):
        files.load_pair(truncated, g)


def test_two_d_nifti_reads_as_one_slice(tmp_path: Path, nifti) -> None:
    two_d = nifti(tmp_path / "x.nii.gz", np.ones((7, 5), np.uint8), affine=np.diag([0.8, 0.8, 1.0, 1.0]))
    arr, _, file_shape = files.read_label_map(two_d)
    assert arr.shape == (7, 5, 1) and file_shape == (7, 5, 1) and arr.sum() == 35


def test_atomic_writers_write_nan_as_empty_and_null(tmp_path: Path) -> None:
    files.write_csv_atomic(tmp_path / "o" / "t.csv", ["a", "b"], [[1, float("nan")], [np.float64(0.5), None]])
    assert (tmp_path / "o" / "t.csv").read_text() == "a,b\n1,\n0.5,\n"
    files.write_json_atomic(
        tmp_path / "o" / "t.json", {"x": float("nan"), 1: [np.float32(2.0), float("inf")]}
    )
    assert json.loads((tmp_path / "o" / "t.json").read_text()) == {"x": None, "1": [2.0, None]}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["t.csv", "t.json"]  # no temp files left
