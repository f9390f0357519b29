"""Generated medical files for the data tests: NIfTI volumes, DICOM series, pictures, all in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

#: identifiers written into generated DICOM headers; tests assert they never leak into names, logs or outputs.
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-778899"
STUDY_DATE = "20190412"


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype=None) -> Path:
    import nibabel as nib

    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(arr, None)
    img.set_sform(aff, code=1)
    try:
        with np.errstate(all="ignore"):
            img.set_qform(aff, code=1)
    except nib.spatialimages.HeaderDataError:  # degenerate affines (tests) only fit the sform
        img.set_qform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_atlas(root: Path) -> Path:
    """A one-volume nnU-Net dataset, 40 x 40 x 60 voxels of 1 mm in RAS: ``brain`` (1) fills a box over slices
    5..34 (x, y) and 5..54 (z); ``top`` (2) replaces it in the top ten axial slices, z 45..54 only."""
    import json

    label = np.zeros((40, 40, 60), np.uint8)
    label[5:35, 5:35, 5:55] = 1
    label[5:35, 5:35, 45:55] = 2
    image = np.random.default_rng(0).normal(size=label.shape)
    write_nifti(root / "imagesTr" / "atlas_0000.nii.gz", image, None, np.float32)
    write_nifti(root / "labelsTr" / "atlas.nii.gz", label)
    doc = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "brain": 1, "top": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": "atlas",
    }
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def oblique_affine(
    spacing=(0.8, 0.9, 2.5), angle_deg: float = 20.0, origin=(-40.0, 12.5, 30.0)
) -> np.ndarray:
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def write_dicom_series(
    folder: Path,
    frames: np.ndarray,
    *,
    pixel_spacing: Sequence[float] = (0.7, 0.6),
    positions: Sequence[Sequence[float]] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    slice_gap: float = 2.5,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_number: int = 3,
    modality: str = "CT",
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``frames`` (``K x rows x cols`` stored values, int16) as a CT series; returns the files."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.int16)
    row_cos, col_cos = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    if positions is None:
        positions = [np.array([-50.0, -60.0, 10.0]) + k * slice_gap * normal for k in range(len(frames))]
    paths = []
    for k, frame in enumerate(frames):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = file_names[k] if file_names else f"IM{k:04d}.dcm"
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.StudyDate = PATIENT_NAME, PATIENT_ID, STUDY_DATE
        ds.Modality = modality
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.98"
        ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "120000", "1", "", ""
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = float(slice_gap)
        ds.Rows, ds.Columns = frame.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = frame.tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def write_picture(path: Path, array: np.ndarray) -> Path:
    """Write a 2-D (``H x W``) or colour (``H x W x 3``) uint8/uint16 picture with SimpleITK."""
    import SimpleITK as sitk

    arr = np.asarray(array)
    img = sitk.GetImageFromArray(arr, isVector=arr.ndim == 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (for "nothing was written" assertions)."""
    return {os.path.relpath(p, root) for p in Path(root).rglob("*")}


@pytest.fixture
def ct5n_folder() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent


@pytest.fixture
def series_folder(tmp_path: Path) -> Path:
    """A 6-slice generated CT series (stored values 0..5000, intercept -1024) with shuffled file names."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 3000, size=(6, 12, 10)).astype(np.int16)
    names = [f"x{n}.dcm" for n in (5, 2, 0, 4, 1, 3)]
    write_dicom_series(tmp_path / "series", frames, file_names=names)
    np.save(tmp_path / "frames.npy", frames)
    return tmp_path / "series"
