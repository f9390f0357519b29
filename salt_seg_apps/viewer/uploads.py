"""Turning uploaded files into a volume, safely.

What the viewer accepts: one NIfTI/NRRD/MHA/DICOM file, a zip (a DICOM series, several series, or one image), or
several DICOM files at once. Only files Gradio itself received are read (paths must lie in its upload folder),
the total size is capped, zips are extracted with :func:`salt_seg.data.safe_extract_zip` (member paths, member
count and uncompressed size checked) into the session's own folder, and a folder holding several series asks
the user to pick one (:func:`salt_seg.data.list_dicom_series`). Every problem is a
:class:`~salt_seg.data.errors.DataError` or ``ValueError`` whose message the page shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from salt_seg.data.archive import safe_extract_zip
from salt_seg.data.dicom import SeriesInfo, list_dicom_series
from salt_seg.data.errors import DataError
from salt_seg.data.readers import (
    DEFAULT_MAX_VOXELS,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    file_kind,
    load_volume,
)
from salt_seg.data.volume import Volume


@dataclass
class UploadPolicy:
    """Limits on what an upload may be.

    Attributes:
        max_bytes: largest total upload (all files together).
        zip_factor: a zip may expand to at most ``zip_factor * max_bytes``.
        max_voxels: largest volume (voxels), checked from headers before reading.
        roots: folders uploaded files must lie in (Gradio's upload folder); empty = no check (tests).
    """

    max_bytes: int = 1024 * 1024**2
    zip_factor: int = 8
    max_voxels: int = DEFAULT_MAX_VOXELS
    roots: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"UploadPolicy.max_bytes must be >= 1, got {self.max_bytes}")
        self.roots = [Path(r).resolve() for r in self.roots]


@dataclass
class Staged:
    """Uploaded files made ready to read.

    Attributes:
        path: a single image file, or a folder of DICOM files.
        series: the DICOM series found in ``path`` (folder only); several means the user must choose.
        source_path: the NIfTI file whose header an export copies, else ``None``.
        name: what the user uploaded (for messages).
    """

    path: Path
    series: list[SeriesInfo] = field(default_factory=list)
    source_path: Path | None = None
    name: str = ""

    @property
    def needs_choice(self) -> bool:
        return len(self.series) > 1

    def series_choices(self) -> list[tuple[str, int]]:
        """``(description, index)`` pairs for the series picker (no identifying fields)."""
        return [(s.describe(i), i) for i, s in enumerate(self.series)]


def check_uploaded(paths: Sequence[Path], policy: UploadPolicy) -> None:
    """Refuse paths outside the upload folder, non-files and uploads over the size limit (``ValueError``)."""
    for p in paths:
        real = p.resolve()
        if policy.roots and not any(real.is_relative_to(r) for r in policy.roots):
            raise ValueError(f"{p.name}: not an uploaded file; the viewer reads only files uploaded to it")
        if not real.is_file():
            raise ValueError(f"{p.name}: the upload is not a file")
    total = sum(p.stat().st_size for p in paths)
    if total > policy.max_bytes:
        raise ValueError(
            f"upload of {total / 1024**2:.1f} MB exceeds the limit of {policy.max_bytes / 1024**2:.0f} MB"
        )


def _checked(files: Sequence[str | Path], policy: UploadPolicy) -> list[Path]:
    """The uploaded paths, checked against ``policy`` (:func:`check_uploaded`); ``ValueError`` when none."""
    paths = [Path(f) for f in files if f]
    if not paths:
        raise ValueError("no file uploaded")
    check_uploaded(paths, policy)
    return paths


def _fresh_folder(workdir: str | Path, prefix: str) -> Path:
    """A new ``workdir/<prefix>-N`` (N counts the earlier ones)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    dest = work / f"{prefix}-{sum(1 for _ in work.glob(f'{prefix}-*'))}"
    dest.mkdir()
    return dest


def take_uploads(files: Sequence[str | Path], workdir: str | Path, policy: UploadPolicy) -> list[Path]:
    """Check uploaded files and move them out of Gradio's upload folder into ``workdir/incoming-N/<i>/<name>``.

    Gradio serves its upload folder, so an upload is taken out of it before it is read; file names are kept (the
    page shows them). Afterwards the upload exists only in the session's folder, and goes with the session.

    Raises:
        ValueError: no file, a path outside the upload folder, too large, or gone (taken by an identical upload
            from another tab at the same moment: Gradio stores uploads by content).
    """
    paths = _checked(files, policy)
    dest = _fresh_folder(workdir, "incoming")
    taken = []
    for i, p in enumerate(paths):
        target = dest / str(i) / p.name
        target.parent.mkdir()
        try:
            if _in_roots(p, policy):
                shutil.move(p, target)  # a rename on one file system
            else:  # no upload folder to take it out of (a policy without roots: tests, the command line)
                shutil.copyfile(p, target)
        except FileNotFoundError:
            raise ValueError(f"{p.name}: the upload is no longer on the server; upload it again") from None
        _remove_empty_folder(p.parent, policy)
        taken.append(target)
    return taken


def discard_upload(path: str | Path, policy: UploadPolicy) -> None:
    """Delete an uploaded file from Gradio's upload folder (and its folder when empty); other paths are left."""
    p = Path(path)
    if not _in_roots(p, policy):
        return
    p.unlink(missing_ok=True)
    _remove_empty_folder(p.parent, policy)


def _in_roots(path: Path, policy: UploadPolicy) -> bool:
    real = path.resolve()
    return any(real.is_relative_to(r) for r in policy.roots)


def _remove_empty_folder(folder: Path, policy: UploadPolicy) -> None:
    """Remove Gradio's per-upload folder once empty (never an upload root itself)."""
    real = folder.resolve()
    if real in policy.roots or not _in_roots(real, policy):
        return
    try:
        real.rmdir()
    except OSError:  # not empty (another upload of the same content) or already gone
        pass


def stage_upload(files: Sequence[str | Path], workdir: str | Path, policy: UploadPolicy) -> Staged:
    """Check uploaded files and lay them out in ``workdir`` (a fresh sub-folder per upload).

    Raises:
        ValueError: no file, a path outside the upload folder, too large.
        DataError: an unsafe or unreadable zip, no DICOM image in a set of files.
    """
    paths = _checked(files, policy)
    dest = _fresh_folder(workdir, "upload")
    if len(paths) == 1:
        p = paths[0]
        kind = file_kind(p)
        if kind == "zip":
            files_out = safe_extract_zip(p, dest, max_bytes=policy.zip_factor * policy.max_bytes)
            images = [
                f
                for f in files_out
                if f.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES + PICTURE_SUFFIXES)
            ]
            if len(images) == 1 and len(files_out) <= 2:
                nifti = images[0] if images[0].name.lower().endswith(NIFTI_SUFFIXES) else None
                return Staged(images[0], source_path=nifti, name=p.name)
            return Staged(dest, list_dicom_series(dest), name=p.name)
        if kind in ("nifti", "itk", "picture", "dicom"):
            return Staged(p, source_path=p if kind == "nifti" else None, name=p.name)
        raise DataError(p, f"unsupported upload ({kind})")
    # several files: a DICOM series (or several) sent file by file
    for i, p in enumerate(paths):
        target = dest / f"{i:05d}_{p.name}"
        try:
            os.link(p, target)
        except OSError:
            shutil.copyfile(p, target)
    return Staged(dest, list_dicom_series(dest), name=f"{len(paths)} files")


def load_staged(staged: Staged, series: int | None = None, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read the staged upload (the chosen DICOM series when there are several).

    Raises:
        DataError: unreadable data, or several series and no choice.
    """
    if staged.path.is_dir():
        if staged.needs_choice and series is None:
            raise DataError(None, f"{staged.name} holds {len(staged.series)} series; choose one")
        chosen = staged.series[int(series or 0)].key if staged.series else None
        try:
            vol = load_volume(staged.path, series=chosen, max_voxels=max_voxels)
        except DataError as exc:  # name the upload, not the session folder
            raise DataError(None, f"{staged.name}: {exc.problem}") from None
        return vol
    return load_volume(staged.path, max_voxels=max_voxels)
