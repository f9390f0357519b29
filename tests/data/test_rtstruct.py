"""RTSTRUCT out and back in (issue 19), on pydicom-data's real 5-slice CT series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from salt_seg.data import load_volume
from salt_seg.data.errors import DataError

pytest.importorskip("rt_utils")

from salt_seg.data.rtstruct import read_rtstruct, write_rtstruct  # noqa: E402


@pytest.fixture()
def ct_series(tmp_path: Path) -> Path:
    from pydicom.data import get_testdata_file

    dst = tmp_path / "ct"
    shutil.copytree(Path(get_testdata_file("dicomdirtests/98892001/CT5N")), dst)
    for i, f in enumerate(sorted(dst.iterdir())):  # file order unrelated to slice order
        f.rename(dst / f"im{(7 * i) % 5}")
    return dst


def test_label_map_round_trips_through_contours(ct_series: Path, tmp_path: Path) -> None:
    vol = load_volume(ct_series)
    lab = np.zeros(vol.shape, np.uint8)
    lab[2:9, 3:12, 1:4] = 1  # a box on three slices
    lab[10:14, 4:8, 0] = 2
    lab[11:15, 9:13, 3:5] = 2  # a different shape on other slices: slice order matters
    out = write_rtstruct(
        lab,
        ct_series,
        {1: "liver", 2: "spleen", 3: "empty"},
        tmp_path / "rt.dcm",
        colors={1: (255, 0, 0), 2: (0, 255, 0)},
    )
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "spleen"]  # empty classes have no ROI
    back, names = read_rtstruct(out, vol)
    assert names == {1: "liver", 2: "spleen"}
    # pixel-boundary contours of axis-aligned boxes come back exactly
    np.testing.assert_array_equal(back, lab)


def test_contour_tolerance_on_a_round_shape(ct_series: Path, tmp_path: Path) -> None:
    """The stated tolerance: a disc's mask comes back within one boundary pixel (Dice >= 0.9 on a 16 px image)."""
    vol = load_volume(ct_series)
    yy, xx = np.mgrid[: vol.shape[0], : vol.shape[1]]
    disc = (yy - 8) ** 2 + (xx - 7) ** 2 <= 20
    lab = np.zeros(vol.shape, np.uint8)
    lab[disc, 2] = 1
    back, _ = read_rtstruct(write_rtstruct(lab, ct_series, {1: "disc"}, tmp_path / "rt.dcm"), vol)
    got, want = back[..., 2] == 1, lab[..., 2] == 1
    dice = 2 * (got & want).sum() / (got.sum() + want.sum())
    assert dice >= 0.9
    from scipy import ndimage

    ring = ndimage.binary_dilation(want) & ~ndimage.binary_erosion(want)
    assert not ((got ^ want) & ~ring).any()  # differences only on the boundary
    assert not back[..., [0, 1, 3, 4]].any()


def test_a_label_map_of_another_shape_is_refused(ct_series: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="shape"):
        write_rtstruct(np.zeros((3, 3, 3), np.uint8), ct_series, {1: "a"}, tmp_path / "rt.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_contours_lie_on_the_structure_in_patient_space(tmp_path: Path) -> None:
    """On a non-square, oblique series: every contour vertex is on the boundary of the labelled voxels (within
    half a voxel), so the structure is where the label map puts it, not transposed."""
    from salt_seg.geometry import LPS_TO_RAS
    from tests.data.conftest import write_dicom_series

    t = np.radians(10.0)
    frames = np.full((4, 48, 64), 100, np.int16)  # k x rows x cols
    write_dicom_series(
        tmp_path / "s",
        frames,
        pixel_spacing=(0.7, 0.7),
        orientation=(np.cos(t), np.sin(t), 0, -np.sin(t), np.cos(t), 0),
    )
    vol = load_volume(tmp_path / "s")
    lab = np.zeros(vol.shape, np.uint8)
    lab[10:40, 5:20, 1] = 1  # 30 columns x 15 rows: not symmetric under a transpose
    out = write_rtstruct(lab, tmp_path / "s", {1: "box"}, tmp_path / "rt.dcm")
    back, _ = read_rtstruct(out, vol)
    np.testing.assert_array_equal(back, lab)
    ds = pydicom.dcmread(out)
    pts = np.concatenate(
        [np.asarray(c.ContourData, float).reshape(-1, 3) for c in ds.ROIContourSequence[0].ContourSequence]
    )
    ras = (LPS_TO_RAS[:3, :3] @ pts.T).T
    ijk = (np.linalg.inv(vol.affine) @ np.c_[ras, np.ones(len(ras))].T)[:3].T
    assert np.allclose(ijk[:, 2], 1, atol=1e-3)  # on the labelled slice
    assert ijk[:, 0].min() >= 10 - 0.51 and ijk[:, 0].max() <= 39 + 0.51  # columns 10..39
    assert ijk[:, 1].min() >= 5 - 0.51 and ijk[:, 1].max() <= 19 + 0.51  # rows 5..19
    assert ijk[:, 0].max() - ijk[:, 0].min() > 25  # the long side runs along the columns


def test_anisotropic_pixels_are_refused_before_writing(tmp_path: Path) -> None:
    from tests.data.conftest import write_dicom_series

    write_dicom_series(tmp_path / "s", np.full((3, 8, 10), 100, np.int16), pixel_spacing=(0.8, 0.7))
    vol = load_volume(tmp_path / "s")
    with pytest.raises(DataError, match="square pixels"):
        write_rtstruct(np.ones(vol.shape, np.uint8), tmp_path / "s", {1: "a"}, tmp_path / "rt.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_an_rtstruct_is_a_label_map_of_a_dicom_dataset(ct_series: Path, tmp_path: Path) -> None:
    from salt_seg.data import load_dataset

    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    shutil.copytree(ct_series, root / "images" / "ct")
    vol = load_volume(root / "images" / "ct")
    lab = np.zeros(vol.shape, np.uint8)
    lab[2:9, 3:12, 1:4] = 1
    lab[10:14, 4:8, 0] = 2
    write_rtstruct(
        lab, root / "images" / "ct", {1: "liver", 2: "kidney"}, root / "labels" / "ct.rtstruct.dcm"
    )
    ds = load_dataset(root)
    assert ds.classes == {1: "liver", 2: "kidney"} and not ds.problems
    (case,) = ds.cases
    np.testing.assert_array_equal(ds.load_label(case, vol).array[0], lab)
