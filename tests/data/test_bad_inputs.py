"""Acceptance 2: every bad input gives one clear error naming the file and the problem, and writes nothing.

Each row builds a bad input in a fresh folder, calls the public loader, and checks the message (one line,
starting with the offending path) and that the folder (and the temp dir) holds exactly what it held before.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from salt_seg.data import load_label, load_volume
from salt_seg.data.archive import safe_extract_zip
from salt_seg.data.errors import DataError

from .conftest import PATIENT_ID, PATIENT_NAME, tree, write_dicom_series, write_nifti


def _nifti(tmp: Path, arr=None, affine=None, name="img.nii.gz", dtype=np.float32) -> Path:
    arr = np.random.default_rng(0).normal(size=(6, 7, 8)) if arr is None else arr
    return write_nifti(tmp / name, arr, affine, dtype=dtype)


def truncated_gz(tmp: Path) -> Path:
    path = _nifti(tmp, np.random.default_rng(0).normal(size=(40, 40, 40)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_nii(tmp: Path) -> Path:
    path = _nifti(tmp, name="img.nii")
    path.write_bytes(path.read_bytes()[:-100])
    return path


def garbage_gz(tmp: Path) -> Path:
    (tmp / "img.nii.gz").write_bytes(b"this is not gzip at all" * 10)
    return tmp / "img.nii.gz"


def gzip_of_text(tmp: Path) -> Path:
    (tmp / "img.nii.gz").write_bytes(gzip.compress(b"hello world, not a NIfTI header" * 20))
    return tmp / "img.nii.gz"


def text_as_png(tmp: Path) -> Path:
    (tmp / "img.png").write_text("not a picture")
    return tmp / "img.png"


def unknown_extension(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("patient notes")
    return tmp / "notes.txt"


def dicom_without_pixels(tmp: Path) -> Path:
    from pydicom.data import get_testdata_file

    return Path(shutil.copy(get_testdata_file("rtplan.dcm"), tmp / "plan.dcm"))


def truncated_dicom(tmp: Path) -> Path:
    from pydicom.data import get_testdata_file

    return Path(shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp / "mr.dcm"))


def folder_without_dicom(tmp: Path) -> Path:
    (tmp / "scan").mkdir()
    (tmp / "scan" / "readme.txt").write_text("nothing here")
    return tmp / "scan"


def four_d(tmp: Path) -> Path:
    return _nifti(tmp, np.zeros((5, 5, 5, 3), np.float32))


def with_nan(tmp: Path) -> Path:
    arr = np.zeros((5, 5, 5), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    return _nifti(tmp, arr)


def empty_image(tmp: Path) -> Path:
    return _nifti(tmp, np.zeros((5, 0, 5), np.float32))


def huge_header(tmp: Path) -> Path:
    """A tiny file whose header claims 4096^3 float32 voxels (256 GiB)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.float32)
    path = tmp / "huge.nii"
    with open(path, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 1024)
    return path


def degenerate_affine(tmp: Path) -> Path:
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 1] = aff[:3, 0]  # two parallel voxel axes
    return _nifti(tmp, affine=aff)


def zero_spacing(tmp: Path) -> Path:
    return _nifti(tmp, affine=np.diag([1.0, 0.0, 1.0, 1.0]))


def several_series(tmp: Path) -> Path:
    write_dicom_series(tmp / "study", np.zeros((2, 4, 4)), series_uid="1.2.3.1")
    write_dicom_series(
        tmp / "study", np.zeros((2, 4, 4)), series_uid="1.2.3.2", file_names=["b0.dcm", "b1.dcm"]
    )
    return tmp / "study"


def missing_slice(tmp: Path) -> Path:
    files = write_dicom_series(tmp / "ct", np.zeros((5, 4, 4)))
    files[2].unlink()
    return tmp / "ct"


def duplicate_positions(tmp: Path) -> Path:
    write_dicom_series(tmp / "ct", np.zeros((3, 4, 4)), positions=[[0, 0, 0], [0, 0, 2.5], [0, 0, 2.5]])
    return tmp / "ct"


def ct5n_missing_slice(tmp: Path) -> Path:
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent
    shutil.copytree(src, tmp / "ct5n")
    import pydicom

    files = sorted((tmp / "ct5n").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    files[2].unlink()
    return tmp / "ct5n"


def zip_traversal(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "evil.zip", "w") as zf:
        zf.writestr("ok/a.dcm", b"x" * 10)
        zf.writestr("../../escaped.dcm", b"x" * 10)
    return tmp / "evil.zip"


def zip_absolute(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "abs.zip", "w") as zf:
        zf.writestr("/etc/escaped.dcm", b"x")
    return tmp / "abs.zip"


def zip_not_zip(tmp: Path) -> Path:
    (tmp / "bad.zip").write_bytes(b"PK but no")
    return tmp / "bad.zip"


def nibabel_4d(tmp: Path) -> Path:  # a real file from nibabel's test data
    return Path(shutil.copy(Path(__import__("nibabel").__file__).parent / "tests/data/example4d.nii.gz", tmp))


def nibabel_nan(tmp: Path) -> Path:  # a real resampled file with NaN outside the field of view
    return Path(
        shutil.copy(Path(__import__("nibabel").__file__).parent / "tests/data/resampled_anat_moved.nii", tmp)
    )


# (builder, loader, message regex); loader(path) must raise.
CASES: list[tuple[Callable[[Path], Path], Callable[[Path], object], str]] = [
    (truncated_gz, load_volume, r"truncated or corrupt NIfTI data"),
    (truncated_nii, load_volume, r"truncated NIfTI file: the header promises \d+ bytes"),
    (garbage_gz, load_volume, r"not a readable NIfTI image"),
    (gzip_of_text, load_volume, r"not a readable NIfTI image"),
    (text_as_png, load_volume, r"not a readable image"),
    (unknown_extension, load_volume, r"unsupported file type"),
    (dicom_without_pixels, load_volume, r"holds no image data \(modality RTPLAN\)"),
    (truncated_dicom, load_volume, r"pixel data is truncated"),
    (folder_without_dicom, load_volume, r"no DICOM files found"),
    (four_d, load_volume, r"4-D image with 3 volumes along the 4th axis"),
    (nibabel_4d, load_volume, r"4-D image with 2 volumes along the 4th axis \(shape \(128, 96, 24, 2\)\)"),
    (nibabel_nan, load_volume, r"contains 153 NaN or Inf voxel"),
    (with_nan, load_volume, r"contains 2 NaN or Inf voxel"),
    (empty_image, load_volume, r"empty image \(shape \(5, 0, 5\)\)"),
    (huge_header, load_volume, r"68719476736 voxels .* more than the cap"),
    (degenerate_affine, load_volume, r"degenerate affine: voxel axes are \(nearly\) parallel"),
    (zero_spacing, load_volume, r"degenerate affine: voxel spacing"),
    (
        several_series,
        load_volume,
        r"holds 2 DICOM series; choose one with series=INDEX or KEY: \[0\] key \w{8}",
    ),
    (missing_slice, load_volume, r"inconsistent slice spacing: gaps from 2\.500 to 5\.000 mm"),
    (ct5n_missing_slice, load_volume, r"inconsistent slice spacing"),
    (duplicate_positions, load_volume, r"duplicate slice position"),
    (zip_traversal, load_volume, r"unsafe member path '\.\./\.\./escaped\.dcm'"),
    (zip_absolute, load_volume, r"unsafe member path '/etc/escaped\.dcm'"),
    (zip_not_zip, load_volume, r"not a readable zip archive"),
]


def _zip_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("salt-seg-zip-*")}


@pytest.mark.parametrize(("build", "loader", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_has_one_clear_error_and_writes_nothing(tmp_path, build, loader, message):
    path = build(tmp_path)
    before, temps = tree(tmp_path), _zip_temp_dirs()
    with pytest.raises(DataError) as info:
        loader(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: "), text
    assert __import__("re").search(message, text), text
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert tree(tmp_path) == before
    assert _zip_temp_dirs() == temps
    assert not (tmp_path.parent / "escaped.dcm").exists() and not Path("/etc/escaped.dcm").exists()


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_volume(tmp_path / "nope.nii.gz")


def test_truncated_gz_is_not_read_as_zeros_like_simpleitk_would(tmp_path):
    import SimpleITK as sitk

    path = truncated_gz(tmp_path)
    try:  # the trap this guards against: SimpleITK zero-fills the missing tail
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert (arr == 0).mean() > 0.3
    except RuntimeError:
        pass
    with pytest.raises(DataError, match="truncated"):
        load_volume(path)


def test_voxel_cap_is_checked_before_allocating(tmp_path):
    path = huge_header(tmp_path)
    tracemalloc.start()
    with pytest.raises(DataError, match="cap"):
        load_volume(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 1024**2


def test_voxel_cap_is_configurable(tmp_path):
    path = _nifti(tmp_path)
    assert load_volume(path, max_voxels=6 * 7 * 8).shape == (6, 7, 8)
    with pytest.raises(DataError, match="336 voxels .*cap of 100"):
        load_volume(path, max_voxels=100)


# --- labels ------------------------------------------------------------------------------------------------------
@pytest.fixture
def image(tmp_path):
    return load_volume(_nifti(tmp_path, affine=np.diag([1.0, 1.5, 2.0, 1.0])))


@pytest.mark.parametrize(
    ("arr", "affine", "kwargs", "message"),
    [
        (
            np.zeros((6, 7, 9)),
            np.diag([1.0, 1.5, 2.0, 1.0]),
            {},
            r"label shape \(6, 7, 9\) does not match image shape \(6, 7, 8\)",
        ),
        (
            np.zeros((6, 7, 8)),
            np.array([[1, 0, 0, 5.0], [0, 1.5, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]),
            {},
            r"label geometry does not match image .*up to 5 mm in origin",
        ),
        (np.zeros((6, 7, 8)), np.diag([1.0, 1.5, 2.5, 1.0]), {}, r"label geometry does not match image"),
        (np.full((6, 7, 8), 0.5), np.diag([1.0, 1.5, 2.0, 1.0]), {}, r"label values are not integers"),
        (
            np.full((6, 7, 8), 7.0),
            np.diag([1.0, 1.5, 2.0, 1.0]),
            {"classes": [1, 2]},
            r"label values \[7\] are not among the declared classes \[0, 1, 2\]",
        ),
        (np.full((6, 7, 8), -1.0), np.diag([1.0, 1.5, 2.0, 1.0]), {}, r"negative values"),
    ],
    ids=["shape", "origin", "spacing", "non-integer", "undeclared-class", "negative"],
)
def test_bad_labels(tmp_path, image, arr, affine, kwargs, message):
    path = write_nifti(tmp_path / "lab.nii.gz", arr, affine, dtype=np.float32)
    before = tree(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        load_label(path, image, **kwargs)
    assert str(info.value).startswith(f"{path}: ")
    assert tree(tmp_path) == before


def test_zip_size_cap_counts_declared_and_actual_bytes(tmp_path):
    with zipfile.ZipFile(tmp_path / "big.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 200_000)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError, match="more than the cap of 1000 bytes"):
        safe_extract_zip(tmp_path / "big.zip", dest, max_bytes=1000)
    assert list(dest.iterdir()) == []
    with pytest.raises(DataError, match="5 members, more than the cap of 3"):
        safe_extract_zip(_many(tmp_path), dest, max_members=3)
    assert list(dest.iterdir()) == []


def _many(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "many.zip", "w") as zf:
        for i in range(5):
            zf.writestr(f"d/{i}.dcm", b"x")
    return tmp / "many.zip"


def test_zip_symlink_member_refused(tmp_path):
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract_zip(tmp_path / "l.zip", dest)
    assert list(dest.iterdir()) == []


def test_zip_partial_extraction_is_undone(tmp_path):
    with zipfile.ZipFile(tmp_path / "p.zip", "w") as zf:
        zf.writestr("a/one.dcm", b"1" * 600)
        zf.writestr("b/c/two.dcm", b"2" * 600)
    dest = tmp_path / "out"
    dest.mkdir()
    # declared total (1200) passes a 1200 cap; make the cap trip on the second member's bytes instead
    with pytest.raises(DataError, match="cap"):
        safe_extract_zip(tmp_path / "p.zip", dest, max_bytes=900)
    assert list(dest.iterdir()) == []
    assert len(safe_extract_zip(tmp_path / "p.zip", dest)) == 2
