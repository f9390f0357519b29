"""DICOM-SEG out and back in (issue 19), on pydicom-data's real 5-slice CT series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from salt_seg.data import load_volume
from salt_seg.data.dicom_seg import read_dicom_seg, source_datasets, write_dicom_seg
from salt_seg.data.errors import DataError

pytest.importorskip("highdicom")


@pytest.fixture()
def ct_series(tmp_path: Path) -> Path:
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("dicomdirtests/98892001/CT5N"))
    dst = tmp_path / "ct"
    shutil.copytree(src, dst)
    return dst


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[2:9, 3:12, 1:4] = 1
    lab[10:14, 4:8, 0:5] = 4  # a non-consecutive class id
    lab[5, 5, 2] = 4
    return lab


def test_label_map_round_trips_voxel_for_voxel_with_names(ct_series: Path, tmp_path: Path) -> None:
    vol = load_volume(ct_series)
    lab = _labels(vol.shape)
    out = write_dicom_seg(
        lab,
        ct_series,
        {1: "liver", 4: "L ventricle", 7: "never predicted"},
        tmp_path / "seg.dcm",
        algorithm={"model": "runs/x", "adapter": "salt", "base_hash": "abc123"},
    )
    back, names = read_dicom_seg(out, vol)
    np.testing.assert_array_equal(back, lab)
    assert names == {1: "liver", 4: "L ventricle", 7: "never predicted"}
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    sources = source_datasets(ct_series)
    assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    refs = {
        item.ReferencedSOPInstanceUID
        for s in ds.ReferencedSeriesSequence
        for item in s.ReferencedInstanceSequence
    }
    assert refs == {s.SOPInstanceUID for s in sources}
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "salt_seg"
    params = str(algo.AlgorithmParameters)
    assert "abc123" in params and "salt" in params
    # every frame sits where its source image is
    by_uid = {s.SOPInstanceUID: s for s in sources}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        src_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(pos, [float(v) for v in by_uid[src_uid].ImagePositionPatient], atol=1e-4)


def test_frames_follow_the_volume_not_the_file_order(ct_series: Path, tmp_path: Path) -> None:
    """Renaming the files does not change which image each slice of the label map belongs to."""
    vol = load_volume(ct_series)
    lab = np.zeros(vol.shape, np.uint8)
    for k in range(vol.shape[2]):
        lab[k : k + 2, 0:2, k] = 1  # a different pattern on every slice
    for i, f in enumerate(sorted(ct_series.iterdir())):
        f.rename(ct_series / f"z{9 - i}")
    back, _ = read_dicom_seg(
        write_dicom_seg(lab, ct_series, {1: "a"}, tmp_path / "s.dcm"), load_volume(ct_series)
    )
    np.testing.assert_array_equal(back, lab)


def test_mismatches_are_one_line_errors_and_write_nothing(ct_series: Path, tmp_path: Path) -> None:
    vol = load_volume(ct_series)
    out = tmp_path / "seg.dcm"
    with pytest.raises(DataError, match="5 images"):
        write_dicom_seg(np.zeros((*vol.shape[:2], 3), np.uint8), ct_series, {1: "a"}, out)
    with pytest.raises(ValueError, match=r"label values \[2\] have no class name"):
        write_dicom_seg(np.full(vol.shape, 2, np.uint8), ct_series, {1: "a"}, out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(DataError, match="not a readable DICOM Segmentation"):
        read_dicom_seg(tmp_path / "junk.dcm", vol)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="Debian dicom3tools is not installed")
def test_dicom3tools_validator_finds_no_error_or_warning(ct_series: Path, tmp_path: Path) -> None:
    import subprocess

    vol = load_volume(ct_series)
    out = write_dicom_seg(_labels(vol.shape), ct_series, {1: "liver", 4: "kidney"}, tmp_path / "seg.dcm")
    res = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, check=False)
    report = res.stdout + res.stderr
    assert "Segmentation" in report  # the validator recognised the IOD
    assert "Error" not in report and "Warning" not in report, report
    # the validator does report problems: the source CT itself lacks a Type 2C attribute
    src = subprocess.run(["dciodvfy", str(sorted(ct_series.iterdir())[0])], capture_output=True, text=True)
    assert "Error" in src.stdout + src.stderr


def test_a_dicom_seg_is_a_label_map_of_a_dicom_dataset(ct_series: Path, tmp_path: Path) -> None:
    """``images/<case>/`` + ``labels/<case>.seg.dcm``: the dataset reads the SEG onto its series' grid."""
    from salt_seg.data import load_dataset

    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    shutil.copytree(ct_series, root / "images" / "ct")
    vol = load_volume(root / "images" / "ct")
    lab = _labels(vol.shape)
    write_dicom_seg(lab, root / "images" / "ct", {1: "liver", 4: "kidney"}, root / "labels" / "ct.seg.dcm")
    ds = load_dataset(root)
    assert ds.format == "dicom" and not ds.problems
    assert ds.classes == {1: "liver", 4: "kidney"}  # the segment names, without a classes.json
    (case,) = ds.cases
    assert case.label == root / "labels" / "ct.seg.dcm"
    got = ds.load_label(case, vol)
    np.testing.assert_array_equal(got.array[0], lab)
    np.testing.assert_allclose(got.affine, vol.affine)
    # a SEG of another series' grid is refused, naming the file
    other = load_volume(root / "images" / "ct")
    other.affine = other.affine.copy()
    other.affine[:3, 3] += 0.3
    with pytest.raises(DataError, match="not on the image series' grid"):
        read_dicom_seg(root / "labels" / "ct.seg.dcm", other)
