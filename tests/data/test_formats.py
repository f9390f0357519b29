"""Acceptance 3: every dataset format loads a generated example and ``auto`` picks it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from salt_seg.data import DATASET_FORMATS, check_dataset, detect_format, load_dataset, load_volume
from salt_seg.data.errors import DataError

from .conftest import write_dicom_series, write_nifti, write_picture

AFF = np.diag([0.9, 0.9, 2.0, 1.0])


def _label(shape, value=1, seed=0):
    lab = np.zeros(shape, np.uint8)
    lab[1:4, 2:5, 1:3] = value
    return lab


def make_nnunet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for case in ("liver_001", "liver_002"):
        for ch in range(2):
            write_nifti(
                root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", rng.normal(size=(6, 7, 5)), AFF, np.float32
            )
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", _label((6, 7, 5), 2), AFF)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT", "1": "PET"},
                "labels": {"background": 0, "liver": 1, "tumour": 2},
                "numTraining": 2,
                "file_ending": ".nii.gz",
                "name": "toy",
            }
        )
    )
    return root


def make_msd(root: Path) -> Path:
    rng = np.random.default_rng(1)
    training = []
    for case in ("brain_001", "brain_002", "brain_003"):
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", rng.normal(size=(6, 7, 5, 2)), AFF, np.float32)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", _label((6, 7, 5)), AFF)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "BrainToy",
                "modality": {"0": "FLAIR", "1": "T1w"},
                "labels": {"0": "background", "1": "edema"},
                "numTraining": 3,
                "training": training,
                "test": [],
            }
        )
    )
    return root


def make_salt(root: Path) -> Path:
    rng = np.random.default_rng(2)
    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        name = f"vessel{i}.png"
        write_picture(root / "images" / name, rng.integers(0, 255, (16, 20, 3)).astype(np.uint8))
        mask = np.zeros((16, 20), np.uint8)
        mask[4:9, 3:15] = 255
        write_picture(root / "masks" / name, mask)
        rows.append({"imgs": name, "split": split})
    with open(root / "data_split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["imgs", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


def make_dicom(root: Path) -> Path:
    for n, case in enumerate(("pat_a", "pat_b")):
        write_dicom_series(root / "images" / case, np.full((4, 6, 5), 1100), series_uid=f"1.2.3.{n + 1}")
        vol = load_volume(root / "images" / case)
        write_nifti(root / "labels" / f"{case}.nii.gz", _label(vol.shape), vol.affine)
    return root


def make_pairs(root: Path) -> Path:
    for case in ("a", "b"):
        write_nifti(root / "images" / f"{case}.nii.gz", np.ones((5, 5, 5)), AFF, np.float32)
        write_nifti(root / "labels" / f"{case}.nii.gz", _label((5, 5, 5), 255), AFF)
    return root


def make_flat_pairs(root: Path) -> Path:
    for case in ("x1", "x2"):
        write_nifti(root / f"{case}.nii.gz", np.ones((5, 5, 5)), AFF, np.float32)
        write_nifti(root / f"{case}_seg.nii.gz", _label((5, 5, 5), 2), AFF)
    (root / "classes.json").write_text(json.dumps({"1": "kidney", "2": "cyst"}))
    return root


MAKERS = {"nnunet": make_nnunet, "msd": make_msd, "salt": make_salt, "dicom": make_dicom, "pairs": make_pairs}


def test_every_registered_format_has_an_example():
    assert set(MAKERS) == set(DATASET_FORMATS)


@pytest.mark.parametrize("fmt", sorted(MAKERS))
def test_format_loads_and_auto_detects(tmp_path, fmt):
    root = MAKERS[fmt](tmp_path / fmt)
    assert detect_format(root) == fmt
    ds = load_dataset(root)  # auto
    explicit = load_dataset(root, fmt)
    assert ds.format == explicit.format == fmt
    assert [c.case_id for c in ds.cases] == [c.case_id for c in explicit.cases]
    assert len(ds.labelled) == len(ds.cases) >= 2
    report = check_dataset(ds)
    assert report.ok, report.problems
    for r in report.cases:
        assert r.label_voxels and sum(n for k, n in r.label_voxels.items() if k) > 0


def test_nnunet_details(tmp_path):
    ds = load_dataset(make_nnunet(tmp_path / "d"))
    assert ds.classes == {1: "liver", 2: "tumour"}
    assert ds.channel_names == ["CT", "PET"]
    assert ds.case_ids == ["liver_001", "liver_002"]
    img = ds.load_image("liver_002")
    assert img.array.shape == (2, 6, 7, 5) and img.channel_names == ["CT", "PET"]
    assert ds.load_label("liver_002", img).array.max() == 2


def test_msd_modalities_become_channels(tmp_path):
    ds = load_dataset(make_msd(tmp_path / "d"))
    assert ds.multichannel and ds.channel_names == ["FLAIR", "T1w"]
    assert ds.classes == {1: "edema"}
    assert ds.load_image(ds.cases[0]).n_channels == 2


def test_salt_masks_0_255_read_as_binary_and_split_hints_kept(tmp_path):
    ds = load_dataset(make_salt(tmp_path / "d"))
    assert [c.split for c in ds.cases] == ["train", "train", "val", "test"]
    img = ds.load_image(ds.cases[0])
    assert img.is_2d and img.n_channels == 3
    lab = ds.load_label(ds.cases[0], img)
    assert set(np.unique(lab.array)) == {0, 1}


def test_dicom_series_with_nifti_labels(tmp_path):
    ds = load_dataset(make_dicom(tmp_path / "d"))
    img = ds.load_image("pat_a")
    assert img.modality == "CT" and img.array.max() == pytest.approx(1100 - 1024)
    assert ds.load_label("pat_a", img).data.sum() > 0


def test_flat_pairs_with_class_table(tmp_path):
    root = make_flat_pairs(tmp_path / "d")
    assert detect_format(root) == "pairs"
    ds = load_dataset(root)
    assert ds.case_ids == ["x1", "x2"] and ds.classes == {1: "kidney", 2: "cyst"}
    assert ds.label_remap is None
    assert check_dataset(ds).ok


def test_unknown_format_and_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset format 'nifti'; valid: \['auto', 'nnunet'"):
        load_dataset(tmp_path, "nifti")
    with pytest.raises(DataError, match="not a dataset in any known layout"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "a": [1, 2]},
                "file_ending": ".nii.gz",
            },
            "region-based",
        ),
        (
            {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": "x"}, "file_ending": ".nii.gz"},
            "not an integer",
        ),
        ({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}, "lacks 'labels'"),
    ],
)
def test_bad_nnunet_dataset_json(tmp_path, doc, message):
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as info:
        load_dataset(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "dataset.json"))


def test_invalid_json_names_file(tmp_path):
    root = make_nnunet(tmp_path / "d")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset.json: invalid JSON"):
        load_dataset(root, "nnunet")


def test_structural_problems_strict_or_collected(tmp_path):
    root = make_nnunet(tmp_path / "d")
    (root / "labelsTr" / "liver_002.nii.gz").unlink()
    with pytest.raises(DataError, match="label for case liver_002 is missing"):
        load_dataset(root)
    ds = load_dataset(root, strict=False)
    assert len(ds.problems) == 1 and ds.case("liver_002").label is None


def test_unknown_case_id_is_a_named_error(tmp_path):
    ds = load_dataset(make_nnunet(tmp_path / "d"))
    with pytest.raises(
        DataError, match=r"no case 'liver_009' in dataset toy; e.g. \['liver_001', 'liver_002'\]"
    ):
        ds.case("liver_009")
