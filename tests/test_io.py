"""``salt_seg.io``: atomic files and folders, the NIfTI writer, and errors that name the destination (issue 15)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from salt_seg.data.errors import storage_error
from salt_seg.io import (
    atomic_folder,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    save_nifti,
)

OBLIQUE = np.array(
    [[0.8, -0.3, 0.0, -12.5], [0.25, 0.9, 0.1, 40.0], [0.0, -0.05, 2.5, -7.25], [0.0, 0.0, 0.0, 1.0]]
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_whole_and_keeps_a_new_files_mode(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "old")
    atomic_write_bytes(path, b"new \xc3\xa9")
    atomic_write_json(tmp_path / "b.json", {"x": float("nan"), "p": tmp_path}, default=str)
    assert path.read_text(encoding="utf-8") == "new é"
    assert (tmp_path / "b.json").read_text() == f'{{\n  "x": NaN,\n  "p": "{tmp_path}"\n}}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    assert _names(tmp_path) == ["b.json", "sub"] and _names(tmp_path / "sub") == ["a.txt"]


def test_atomic_path_failure_keeps_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(path, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.") and tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["plot.png"]
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and _names(tmp_path) == ["plot.png"]


def test_a_full_disk_names_the_destination_not_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f) -> None:  # noqa: ANN001
            self.f = f

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError) as info:
        atomic_write_text(path, "new")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert storage_error(info.value) == f"{path}: no space left on device (disk full)"
    assert path.read_text() == "old" and _names(tmp_path) == ["summary.json"]

    def refuse(img, filename) -> None:  # noqa: ANN001 - nibabel.save's signature; names the temporary file
        raise OSError(errno.EROFS, "Read-only file system", filename)

    monkeypatch.setattr(nib, "save", refuse)
    with pytest.raises(OSError) as info:
        save_nifti(tmp_path / "m.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert info.value.filename == str(tmp_path / "m.nii.gz")
    assert storage_error(info.value) == f"{tmp_path / 'm.nii.gz'}: read-only file system"
    assert _names(tmp_path) == ["summary.json"]


def test_atomic_folder_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "ds"
    with pytest.raises(OSError) as info, atomic_folder(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".ds.tmp-")
        (tmp / "a.txt").write_text("a")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "b.txt"))
    assert info.value.filename == str(out)  # the folder asked for, not its temporary twin
    assert list(tmp_path.iterdir()) == []  # nor the parent it created

    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing visible before the body ends
    assert _names(out) == ["a.txt"]

    with pytest.raises(ValueError, match="bad"), atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("b")
        raise ValueError("bad")
    assert _names(out) == ["a.txt"] and _names(out.parent) == ["ds"]

    with atomic_folder(out) as tmp:  # replaces the folder as a whole
        (tmp / "b.txt").write_text("b")
    assert _names(out) == ["b.txt"] and _names(out.parent) == ["ds"]


def test_atomic_folder_merge_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "summary.csv").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out, merge=True) as tmp:
        (tmp / "summary.csv").write_text("new")
        raise RuntimeError
    assert (out / "summary.csv").read_text() == "old"
    with atomic_folder(out, merge=True) as tmp:
        (tmp / "summary.csv").write_text("new")
        (tmp / "per_case.csv").write_text("x")
    assert _names(out) == ["keep.txt", "per_case.csv", "summary.csv"]
    assert (out / "summary.csv").read_text() == "new" and _names(tmp_path) == ["evaluation"]


@pytest.mark.parametrize("name", ["m.nii.gz", "m.nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_save_nifti_round_trips_data_and_affine(tmp_path: Path, name: str, dtype: type) -> None:
    arr = (np.random.default_rng(0).random((4, 5, 6)) * 100).astype(dtype)
    path = save_nifti(tmp_path / name, arr, OBLIQUE)
    img = nib.load(str(path))
    assert np.array_equal(np.asarray(img.dataobj), arr) and img.get_data_dtype() == dtype
    assert np.array_equal(img.affine, OBLIQUE.astype(np.float32).astype(np.float64))  # sform is float32
    assert int(img.header["sform_code"]) == 1
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert _names(tmp_path) == [name]


def test_save_nifti_header_fields_and_copied_geometry(tmp_path: Path) -> None:
    src = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    src.header.set_qform(src.affine, code=1)
    src.header.set_sform(src.affine, code=2)
    p = save_nifti(
        tmp_path / "p.nii.gz",
        np.full((3, 3, 3, 2), 255, np.uint8),
        src.affine,
        dtype=np.uint8,
        header=src.header,
        slope=1 / 255,
        intent="none",
        cal=(0.0, 1.0),
        description="probabilities",
    )
    img = nib.load(str(p))
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 1  # the source's codes
    assert (
        np.allclose(img.get_fdata(), 1.0)
        and img.header["descrip"].tobytes().rstrip(b"\0") == b"probabilities"
    )
    sheared = np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    q = nib.load(str(save_nifti(tmp_path / "s.nii", np.zeros((2, 2, 2), np.int16), sheared, units=False)))
    assert int(q.header["qform_code"]) == 0 and np.allclose(q.affine, sheared)  # a qform cannot hold a shear
    assert q.header.get_xyzt_units() == ("unknown", "unknown")


def test_save_nifti_writes_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_nifti(tmp_path / "m.nii.gz", np.ones((2, 2, 2), np.uint8), np.eye(4))
    before = path.read_bytes()
    real_save = nib.save

    def dying_save(img, filename) -> None:  # noqa: ANN001
        real_save(img, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:20])  # half-written
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(path, np.zeros((2, 2, 2), np.uint8), np.eye(4))
    with pytest.raises(OSError, match="disk full"):
        save_nifti(tmp_path / "new.nii", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert path.read_bytes() == before and _names(tmp_path) == ["m.nii.gz"]
    with pytest.raises(ValueError, match="m.png"):
        save_nifti(tmp_path / "m.png", np.zeros((2, 2, 2)), np.eye(4))
