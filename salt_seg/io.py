"""Writing files so that a reader never sees half of one: atomic files, atomic folders, the NIfTI writer.

* A file is written under a temporary name in its own folder (``.NAME.XXXXXX.tmp``: hidden, and a leftover of an
  interrupted write by the run directory's rules), flushed to the disk and renamed onto ``path``: a reader sees
  the old content or the new, never a mix. On failure the temporary file is removed and the old file is intact.
* A folder is built in a temporary sibling (``.NAME.tmp-XXXXXX``) and renamed into place when the body succeeds;
  on failure it is removed, with the empty parent folders this write created.
* Errors name what the caller asked for: an ``OSError`` from the temporary file (or a nameless one, as a full disk
  raises it from ``write()``) carries the destination path, so the CLI's one-line message
  (:func:`salt_seg.data.errors.storage_error`) names the file or folder the user gave.

Callers that hand a file name to another library (``nibabel.save``, ``Figure.savefig``) use
:func:`atomic_path`; bytes and text go through :func:`atomic_write_bytes` / :func:`atomic_write_text`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "nifti_suffix",
    "save_nifti",
    "write_durable",
]


# --- primitives -------------------------------------------------------------------------------------------------
def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a file system that cannot is not an error."""
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_durable(path: str | Path, data: bytes) -> None:
    """Write ``path`` (not atomically) and flush it to the disk; an ``OSError`` names ``path``.

    For files inside a folder that is published as a whole (:func:`atomic_folder`, checkpoint units).
    """
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file
            exc.filename = str(path)
        raise


def _blame(exc: BaseException, temps: tuple[str, ...], prefix: str | None, path: Path) -> None:
    """Make an OS error about a temporary name (or about no name) name ``path``, the destination."""
    if not isinstance(exc, OSError) or exc.errno is None:  # a bare OSError("...") is a message, not a refusal
        return
    name = exc.filename
    if (
        name is None
        or any(str(name) == t or str(name).startswith(t + os.sep) for t in temps)
        or (prefix is not None and Path(str(name)).name.startswith(prefix))
    ):
        exc.filename = str(path)


def _new_temp(path: Path, suffix: str) -> tuple[int, str]:
    """Create ``.NAME.XXXXXXXX.tmpSUFFIX`` next to ``path``; the mode is a new file's (``0o666`` less the umask,
    what the destination would get), not ``mkstemp``'s ``0o600``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _publish(tmp: str, path: Path, *, durable: bool) -> None:
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


# --- atomic files -----------------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (temporary file in the same folder, flushed, renamed).

    Args:
        path: the destination; missing parent folders are created.
        data: the whole new content.
        durable: flush the file and the folder entry to the disk before returning.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed (its ``filename`` is ``path``); ``path`` keeps its old content and no temporary
            file is left.
    """
    path = Path(path)
    with atomic_path(path, durable=durable) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY), "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2, **dumps: Any) -> Path:
    """Write ``json.dumps(obj, indent=indent, **dumps)`` and a final newline atomically.

    ``dumps`` passes options to :func:`json.dumps` (``default=str``, ``allow_nan=False``...).
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """A temporary file name next to ``path`` for a writer that takes a file name; renamed onto ``path`` on exit.

    ``suffix`` ends the temporary name, for writers that choose the format from it (``.nii.gz``, ``.png``). An
    exception in the body leaves ``path`` as it was and removes the temporary file.

    Example:
        >>> with atomic_path(out, suffix=".png") as tmp:  # doctest: +SKIP
        ...     fig.savefig(tmp)

    Raises:
        OSError: from the body or the rename, naming ``path`` when it named the temporary file or nothing.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = _new_temp(path, suffix)
        os.close(fd)
        yield Path(tmp)
        if durable:
            with open(tmp, "rb") as f:  # the writer may not have flushed: make the content durable first
                os.fsync(f.fileno())
        _publish(tmp, path, durable=durable)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _blame(exc, (tmp,) if tmp else (), None, path)
        raise


# --- atomic folders ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_folder(path: str | Path, *, merge: bool = False, durable: bool = True) -> Iterator[Path]:
    """A temporary sibling folder to build ``path`` in, published when the body succeeds.

    Args:
        path: the folder to create or replace.
        merge: publish entry by entry into ``path`` (kept, with its other files) instead of replacing ``path``
            as a whole: each entry of the temporary folder replaces its namesake.
        durable: flush the temporary folder and ``path``'s parent to the disk.

    Yields:
        The temporary folder (``.NAME.tmp-XXXXXX`` next to ``path``).

    Raises:
        OSError: from the body or the publication; one that names the temporary folder, something inside it,
            or nothing names ``path`` instead. On any failure the temporary folder and the empty parent folders
            created for it are removed, and ``path`` is as it was (with ``merge``, up to the entries already
            moved when the publication itself fails).
    """
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    missing = [p for p in reversed(path.absolute().parents) if not p.exists()]
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        yield tmp
        if durable:
            fsync_dir(tmp)
        if merge:
            path.mkdir(exist_ok=True)
            for entry in sorted(tmp.iterdir()):
                os.replace(entry, path / entry.name)
            if durable:
                fsync_dir(path)
        elif path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
        if durable:
            fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(missing):
            with contextlib.suppress(OSError):
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
        _blame(exc, (str(tmp),) if tmp else (), prefix, path)
        raise
    finally:
        if tmp is not None and merge:
            shutil.rmtree(tmp, ignore_errors=True)


# --- NIfTI ------------------------------------------------------------------------------------------------------
def nifti_suffix(path: str | Path) -> str:
    """``.nii.gz`` or ``.nii`` (case-insensitive), the part of the name that selects compression.

    Raises:
        ValueError: ``path`` is neither (the message names it).
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise ValueError(f"{path}: NIfTI files are written with a .nii.gz or .nii name")


def nifti_image(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: np.dtype | type | None = None,
    header: Any | None = None,
    units: bool = True,
) -> Any:
    """A NIfTI image of ``array`` on ``affine`` (see :func:`save_nifti` for the arguments)."""

    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    affine = np.asarray(affine, dtype=np.float64)
    if header is not None:
        cls: type[nib.Nifti1Image] = (
            nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        )
        hdr = header.copy()
        if np.allclose(hdr.get_best_affine(), affine, atol=1e-4):
            # the header's own qform/sform and their codes are kept
            img = cls(arr, hdr.get_best_affine(), header=hdr)
            if dtype is not None:
                img.set_data_dtype(dtype)
            return img
        log.warning("the source header's affine differs from the volume's; writing the volume's affine")
    img = nib.Nifti1Image(arr, affine)
    img.header.set_sform(affine, code=1)
    with np.errstate(all="ignore"):
        img.header.set_qform(affine, code=1)
    if not np.allclose(img.header.get_qform(), affine, atol=1e-5):  # sheared (e.g. gantry tilt): sform only
        img.header.set_qform(affine, code=0)
    if units:
        img.header.set_xyzt_units("mm", "sec")
    if dtype is not None:
        img.set_data_dtype(dtype)
    return img


def save_nifti(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: np.dtype | type | None = None,
    header: Any | None = None,
    units: bool = True,
    slope: float | None = None,
    intent: str | None = None,
    cal: tuple[float, float] | None = None,
    description: str | None = None,
) -> Path:
    """Write ``array`` as a NIfTI file atomically; the format (``.nii`` / gzip ``.nii.gz``) follows the name.

    Geometry: with ``header`` (a source NIfTI-1/2 header) whose affine agrees with ``affine``, the header is
    copied: its qform and sform matrices *and codes*, pixdim and units stay the file's own. Otherwise ``affine``
    is the sform (code 1, scanner) and the qform (code 1) when a qform can hold it exactly, else qform code 0
    (sheared grids, e.g. gantry tilt).

    Args:
        path: ``.nii.gz`` or ``.nii`` destination; missing parent folders are created.
        array: ``I x J x K`` (or ``I x J x K x C``) voxel values.
        affine: ``4 x 4`` voxel index -> world RAS+ mm.
        dtype: the on-disk data type (``array`` is cast to it); default ``array``'s.
        header: source header to copy the geometry from (see above).
        units: mark space in mm and time in s when no header is copied (``False`` leaves them unknown).
        slope: ``scl_slope`` (``scl_inter`` 0): readers get ``stored * slope``; ``1.0`` stores values as they are.
        intent: NIfTI intent name (``"label"``, ``"none"``).
        cal: ``(cal_min, cal_max)`` display range.
        description: the header's ``descrip`` (at most 80 bytes).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is not a NIfTI name.
        OSError: the write failed, naming ``path``; an existing file keeps its content and nothing is left behind.
    """

    suffix = nifti_suffix(path)
    img = nifti_image(array, affine, dtype=dtype, header=header, units=units)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    if intent is not None:
        img.header.set_intent(intent)
    if cal is not None:
        img.header["cal_min"], img.header["cal_max"] = cal
    if description is not None:
        img.header["descrip"] = description.encode()
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
