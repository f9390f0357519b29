"""Readers on real files (nibabel's and pydicom's test data) and generated volumes; geometry asserted."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from salt_seg.data.readers import file_kind, load_channels, load_volume, strip_suffix

from .conftest import (
    PATIENT_ID,
    PATIENT_NAME,
    STUDY_DATE,
    oblique_affine,
    write_dicom_series,
    write_nifti,
    write_picture,
)

NIB_DATA = Path(__import__("nibabel").__file__).parent / "tests" / "data"


# --- NIfTI ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"])
def test_nibabel_test_files_keep_their_affine(name):
    import nibabel as nib

    ref = nib.load(str(NIB_DATA / name))
    vol = load_volume(NIB_DATA / name)
    assert vol.shape == ref.shape[:3]
    assert np.allclose(vol.affine, ref.affine)
    assert np.allclose(vol.data, np.asanyarray(ref.dataobj).astype(np.float32))
    assert vol.array.dtype == np.float32
    assert vol.name == strip_suffix(name)


def test_nibabel_las_file_canonicalises_like_nibabel():
    import nibabel as nib

    vol = load_volume(NIB_DATA / "anatomical.nii")
    assert vol.axcodes == "LAS"
    canon = nib.as_closest_canonical(nib.load(str(NIB_DATA / "anatomical.nii")))
    ras = vol.to_ras()
    assert np.allclose(ras.affine, canon.affine)
    assert np.array_equal(ras.data, np.asanyarray(canon.dataobj).astype(np.float32))


@pytest.mark.parametrize(
    ("label", "affine"),
    [
        ("RAS", np.diag([0.8, 0.9, 2.5, 1.0])),
        ("LAS", np.diag([-0.8, 0.9, 2.5, 1.0])),
        ("oblique", oblique_affine()),
    ],
)
def test_generated_volumes_geometry(tmp_path, label, affine):
    arr = np.random.default_rng(0).normal(size=(7, 8, 9)).astype(np.float32)
    path = write_nifti(tmp_path / f"{label}.nii.gz", arr, affine)
    vol = load_volume(path)
    assert np.allclose(vol.affine, affine, atol=1e-5)
    assert np.allclose(vol.spacing, (0.8, 0.9, 2.5), atol=1e-5)
    assert np.array_equal(vol.data, arr)
    ras = vol.to_ras()
    assert ras.axcodes == "RAS"
    centre = vol.voxel_to_world((3, 4, 4))
    assert np.allclose(ras.voxel_to_world(np.rint(ras.world_to_voxel(centre))), centre)
    assert np.array_equal(ras.restore_orientation(ras.data), arr)


def test_singleton_fourth_axis_is_accepted_and_msd_4d_becomes_channels(tmp_path):
    arr = np.random.default_rng(0).normal(size=(4, 5, 6, 1)).astype(np.float32)
    assert load_volume(write_nifti(tmp_path / "a.nii.gz", arr)).array.shape == (1, 4, 5, 6)
    arr2 = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    vol = load_volume(write_nifti(tmp_path / "b.nii.gz", arr2), multichannel=True)
    assert vol.array.shape == (2, 4, 5, 6)
    assert np.array_equal(vol.array[1], arr2[..., 1])


def test_nnunet_channel_files_stack(tmp_path):
    a = np.ones((3, 4, 5), np.float32)
    paths = [write_nifti(tmp_path / f"c_000{i}.nii.gz", a * i, np.diag([2, 2, 2, 1.0])) for i in range(2)]
    vol = load_channels(paths)
    assert vol.array.shape == (2, 3, 4, 5)
    assert vol.array[1].max() == 1


# --- DICOM ------------------------------------------------------------------------------------------------------
def test_ct5n_series_sorted_in_hounsfield_with_geometry(ct5n_folder):
    import pydicom

    vol = load_volume(ct5n_folder)
    assert vol.shape == (16, 16, 5)
    assert vol.modality == "CT"
    assert np.allclose(vol.spacing, (0.488281, 0.488281, 2.5), atol=1e-5)
    headers = [pydicom.dcmread(p) for p in sorted(ct5n_folder.iterdir())]
    headers.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    first = headers[0]
    # RAS origin = LPS position with x and y negated
    ipp = np.array([float(v) for v in first.ImagePositionPatient])
    assert np.allclose(vol.affine[:3, 3], ipp * [-1, -1, 1], atol=1e-4)
    for k, ds in enumerate(headers):  # HU = stored * slope + intercept, slice k in position order
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(vol.array[0, :, :, k], hu.T)
    assert vol.array.min() < -500  # air in HU, not raw stored values
    assert vol.name.startswith("series-") and vol.meta["rescaled"] is True


def test_generated_series_sorted_by_position_not_name(series_folder, tmp_path):
    frames = np.load(tmp_path / "frames.npy")
    vol = load_volume(series_folder)
    assert vol.shape == (10, 12, 6)
    for k in range(6):
        assert np.array_equal(vol.array[0, :, :, k], frames[k].T.astype(np.float32) - 1024)
    assert np.allclose(vol.spacing, (0.6, 0.7, 2.5))
    assert vol.axcodes == "LPS"  # DICOM default orientation, in RAS terms
    assert np.allclose(vol.affine[:3, 3], [50.0, 60.0, 10.0])


def test_oblique_dicom_series_affine(tmp_path):
    t = np.radians(25)
    row, col = [np.cos(t), np.sin(t), 0.0], [0.0, 0.0, -1.0]  # oblique coronal-ish
    frames = np.zeros((3, 6, 5), np.int16)
    frames[1, 2, 3] = 100
    write_dicom_series(
        tmp_path / "obl", frames, orientation=[*row, *col], pixel_spacing=(0.5, 0.4), slice_gap=3.0
    )
    vol = load_volume(tmp_path / "obl")
    normal = np.cross(row, col)
    lps_world = (
        np.array([-50.0, -60.0, 10.0]) + 1 * 3.0 * normal + 3 * 0.4 * np.array(row) + 2 * 0.5 * np.array(col)
    )
    ijk = np.argwhere(vol.data == 100 - 1024)[0]
    assert np.allclose(vol.voxel_to_world(ijk)[0], lps_world * [-1, -1, 1], atol=1e-4)
    assert np.allclose(vol.spacing, (0.4, 0.5, 3.0))


def test_folder_series_choice_by_index_and_key(tmp_path):
    from salt_seg.data.dicom import list_dicom_series, series_key

    write_dicom_series(tmp_path / "mix", np.zeros((2, 4, 4)), series_uid="1.2.3.1", series_number=2)
    write_dicom_series(
        tmp_path / "mix",
        np.ones((3, 4, 4)),
        series_uid="1.2.3.2",
        series_number=7,
        file_names=["b0.dcm", "b1.dcm", "b2.dcm"],
    )
    listing = list_dicom_series(tmp_path / "mix")
    assert [len(s.files) for s in listing] == [2, 3]
    assert load_volume(tmp_path / "mix", series=1).shape[2] == 3
    assert load_volume(tmp_path / "mix", series=series_key("1.2.3.1")).shape[2] == 2
    assert load_volume(tmp_path / "mix", series="1.2.3.2").shape[2] == 3


@pytest.mark.parametrize(
    ("name", "shape", "spacing"),
    [
        ("CT_small.dcm", (128, 128, 1), (0.661468, 0.661468, 5.0)),
        ("MR_small.dcm", (64, 64, 1), (0.3125, 0.3125, 0.8)),
        ("emri_small.dcm", (64, 64, 10), None),  # legacy multi-frame without per-frame geometry
        ("eCT_Supplemental.dcm", (512, 512, 2), (0.388672, 0.388672, 10.0)),  # enhanced CT
    ],
)
def test_single_and_multiframe_dicom_files(name, shape, spacing):
    from pydicom.data import get_testdata_file

    vol = load_volume(get_testdata_file(name))
    assert vol.shape == shape
    if spacing is not None:
        assert np.allclose(vol.spacing, spacing, atol=1e-5)


def test_single_ct_slice_is_in_hounsfield():
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(vol.data[:, :, 0], hu.T.astype(np.float32))


def test_enhanced_ct_takes_geometry_and_rescale_from_functional_groups():
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    pos = [
        np.array([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    first = min(pos, key=lambda p: np.dot(p, [0, 0, -1]))  # normal of IOP (-1,0,0,0,1,0) is -z
    assert np.allclose(vol.affine[:3, 3], first * [-1, -1, 1], atol=1e-3)
    assert vol.axcodes == "RPI"
    assert vol.array.min() == pytest.approx(-1024.0)  # intercept from the Pixel Value Transformation group


def test_compressed_dicom_without_pydicom_decoder_falls_back_to_gdcm():
    from pydicom.data import get_testdata_file

    plain = load_volume(get_testdata_file("MR_small.dcm"))
    jpegls = load_volume(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    assert np.array_equal(plain.array, jpegls.array)


def test_rgb_dicom_has_three_channels():
    from pydicom.data import get_testdata_file

    vol = load_volume(get_testdata_file("SC_rgb.dcm"))
    assert vol.array.shape == (3, 100, 100, 1)
    assert vol.channel_names == ["R", "G", "B"]


def test_zip_of_a_dicom_series(ct5n_folder, tmp_path):
    zpath = tmp_path / "ct.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(ct5n_folder.iterdir()):
            zf.write(p, f"study/series/{p.name}")
    vol = load_volume(zpath)
    assert vol.shape == (16, 16, 5)
    assert np.array_equal(vol.array, load_volume(ct5n_folder).array)
    assert vol.meta["archive"] == "zip"


def test_no_patient_identifiers_in_names_meta_or_logs(series_folder, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    zpath = tmp_path / "s.zip"
    shutil.make_archive(str(zpath.with_suffix("")), "zip", series_folder)
    vols = [load_volume(series_folder), load_volume(zpath), load_volume(next(series_folder.iterdir()))]
    text = caplog.text + " ".join(f"{v.name} {v.meta} {v.channel_names}" for v in vols)
    for ident in (PATIENT_NAME, "Doe", PATIENT_ID, STUDY_DATE, "1.2.826.0.1.3680043.8.498.1"):
        assert ident not in text


# --- NRRD / MHA and pictures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_files_convert_lps_geometry_to_ras(tmp_path, suffix):
    import SimpleITK as sitk

    arr = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)  # sitk order z, y, x
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 2.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    t = np.radians(15)
    img.SetDirection((np.cos(t), -np.sin(t), 0, np.sin(t), np.cos(t), 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    vol = load_volume(tmp_path / f"v{suffix}")
    assert vol.shape == (7, 6, 5)
    assert np.array_equal(vol.data, arr.transpose(2, 1, 0))
    for idx in [(0, 0, 0), (6, 5, 4), (2, 3, 1)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(tuple(int(i) for i in idx)))
        assert np.allclose(vol.voxel_to_world(idx)[0], lps * [-1, -1, 1], atol=1e-4)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_pictures_are_two_d_volumes_that_display_upright(tmp_path, suffix):
    from salt_seg.data.volume import extract_slice

    img = np.zeros((20, 30), np.uint8)
    img[2:6, 20:28] = 200  # a bright block top-right
    vol = load_volume(write_picture(tmp_path / f"p{suffix}", img))
    assert vol.is_2d and vol.shape == (30, 20, 1)
    shown = extract_slice(vol.to_ras().array, 2, 0)[0]
    tol = 30 if suffix == ".jpg" else 0
    assert np.abs(shown - img).max() <= tol


def test_rgb_png_has_three_channels_and_alpha_dropped(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (8, 9, 4)).astype(np.uint8)
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    vol = load_volume(tmp_path / "c.png")
    assert vol.array.shape == (3, 9, 8, 1)
    assert np.array_equal(vol.array[1, :, :, 0], rgba[..., 1].T.astype(np.float32))


def test_file_kind_detects_dicom_without_extension(ct5n_folder):
    assert file_kind(next(ct5n_folder.iterdir())) == "dicom"
    assert file_kind(ct5n_folder) == "dicom-folder"
