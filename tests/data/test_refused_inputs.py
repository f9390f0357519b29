"""Bad input refused for the right reason (issue 14): complex NIfTI, a truncated file inside a DICOM series,
PixelSpacing kept as written, and a zip bomb refused from its declared sizes before anything is extracted."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from salt_seg.data import load_volume
from salt_seg.data.archive import safe_extract_zip
from salt_seg.data.errors import DataError

from .conftest import tree, write_dicom_series


def test_complex_nifti_is_refused_not_cast(tmp_path: Path) -> None:
    arr = (np.ones((4, 5, 6)) + 2j * np.ones((4, 5, 6))).astype(np.complex64)
    path = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way either
        with pytest.raises(DataError) as info:
            load_volume(path)
    assert str(info.value) == (
        f"{path}: complex-valued voxels (complex64); a real-valued image is expected (save the magnitude)"
    )


@pytest.mark.parametrize(
    ("cut", "problem"),
    [
        (100, "truncated or corrupt DICOM file (InvalidDicomError)"),  # inside the preamble
        (200, "truncated DICOM file: it ends before its image data (no Rows/PixelData); re-copy it"),
        (700, "truncated DICOM file: it ends before its image data (no Rows/PixelData); re-copy it"),
        (-10, "pixel data is truncated or cannot be decoded"),
    ],
)
def test_a_truncated_file_in_a_series_is_named(tmp_path: Path, cut: int, problem: str) -> None:
    files = write_dicom_series(tmp_path / "ct", np.zeros((5, 16, 16)))
    data = files[2].read_bytes()
    files[2].write_bytes(data[:cut])
    with pytest.raises(DataError) as info:
        load_volume(tmp_path / "ct")
    text = str(info.value)
    assert text.startswith(f"{files[2]}: {problem}"), text
    assert "missing slice" not in text and "\n" not in text


def test_pixel_spacing_keeps_every_decimal(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "ct", np.zeros((3, 8, 8)), pixel_spacing=(0.957031, 0.703125))
    vol = load_volume(tmp_path / "ct")
    # DICOM PixelSpacing is (row spacing, column spacing) = (y, x)
    assert vol.spacing[0] == pytest.approx(0.703125, abs=1e-9)
    assert vol.spacing[1] == pytest.approx(0.957031, abs=1e-9)


def _bomb(path: Path, mib: int = 80) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("series/IM0001.dcm", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(mib):
                member.write(chunk)
    return path


def test_a_zip_bomb_is_refused_before_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _bomb(tmp_path / "bomb.zip")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, name, *a, **k: opened.append(str(name)) or real_open(self, name, *a, **k),
    )
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = tree(tmp_path)
    with pytest.raises(DataError) as info:
        load_volume(bomb)
    packed = bomb.stat().st_size
    assert str(info.value) == (
        f"{bomb}: zip declares {80 << 20} bytes unpacked from {packed} bytes ({(80 << 20) / packed:.0f}:1, more "
        "than the cap of 100:1; a zip bomb?); refused before extracting anything"
    )
    assert opened == [] and tree(tmp_path) == before


def test_a_well_compressed_small_zip_is_still_read(tmp_path: Path) -> None:
    """The ratio cap spares small archives: sparse masks deflate far beyond 100:1."""
    with zipfile.ZipFile(tmp_path / "m.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mask.raw", b"\0" * (4 << 20))
    dest = tmp_path / "out"
    dest.mkdir()
    assert [p.name for p in safe_extract_zip(tmp_path / "m.zip", dest)] == ["mask.raw"]


def test_the_viewer_and_the_cli_share_the_zip_check() -> None:
    import salt_seg.data.readers  # noqa: F401 - the CLI's reader imports it lazily
    import salt_seg_apps.viewer.uploads as uploads

    assert uploads.safe_extract_zip is safe_extract_zip
