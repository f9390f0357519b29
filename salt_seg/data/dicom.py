"""DICOM input: series folders, single files (including enhanced multi-frame), values in physical units.

* A folder is searched recursively; files are grouped by Series Instance UID. A folder holding several series
  needs a choice (``series=`` index or key from :func:`list_dicom_series`); the error lists them.
* Slices (or frames) are sorted by their position along the slice normal (the cross product of the Image
  Orientation's row and column cosines), and the gaps between them must agree, so a missing slice or two
  interleaved stacks fail loudly instead of producing a distorted volume.
* Stored values go through the Modality LUT (Rescale Slope/Intercept, per slice or per frame) so CT arrives in
  Hounsfield units before any window is applied.
* Nothing identifying leaves this module: series are named by a short hash of their UID, never by patient
  name, ID, dates or free-text descriptions.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.dicom_frames import (
    check_size,
    decode_pixels,
    dicom_affine,
    floats,
    frame_group,
    frames_to_volume,
    monochrome1,
    rescale_of,
    sort_and_step,
)
from salt_seg.data.errors import DataError

logger = logging.getLogger(__name__)

_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG"}
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"


def series_key(uid: str) -> str:
    """A short, non-identifying key for a Series Instance UID (8 hex digits of its SHA-1)."""
    return hashlib.sha1(str(uid).encode()).hexdigest()[:8]


@dataclass
class SeriesInfo:
    """One image series found in a folder (no identifying fields).

    Attributes:
        key: 8-hex-digit hash of the Series Instance UID.
        modality: DICOM modality code (``CT``, ``MR``, ...).
        series_number: the Series Number tag, or ``None``.
        rows: image rows.
        columns: image columns.
        files: the series' files (unsorted).
    """

    key: str
    modality: str
    series_number: int | None
    rows: int
    columns: int
    files: list[Path] = field(default_factory=list)

    def describe(self, index: int) -> str:
        num = "" if self.series_number is None else f" #{self.series_number}"
        return f"[{index}] key {self.key}{num}: {self.modality}, {len(self.files)} file(s), {self.rows}x{self.columns}"


def _read_header(path: Path) -> Any | None:
    """The dataset without pixels, or ``None`` when the file is not DICOM.

    Raises:
        DataError: the file says it is DICOM (the ``DICM`` marker after the preamble, or a ``.dcm`` name) but
            cannot be parsed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError) as exc:
        if _has_dicom_marker(path) or path.name.lower().endswith((".dcm", ".dicom", ".ima")):
            raise DataError(path, f"truncated or corrupt DICOM file ({type(exc).__name__})") from None
        return None


def _has_dicom_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _truncated(stubs: list[tuple[Path, str, bool]], groups: dict[str, SeriesInfo]) -> None:
    """Refuse a file of an image series whose header stops before the image attributes: it was cut short.

    pydicom reads a file cut inside its header without complaint, keeping the elements before the cut; such a
    file has its series' UID (or an image storage SOP class) but no ``Rows``. Skipping it would report a
    missing slice instead of the file.
    """
    for path, key, image_class in stubs:
        if key in groups or image_class:
            raise DataError(
                path, "truncated DICOM file: it ends before its image data (no Rows/PixelData); re-copy it"
            )


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """Enumerate the image series under ``folder`` (recursively), ordered by series number then key.

    Raises:
        FileNotFoundError: the folder does not exist.
        DataError: no DICOM image files were found.
    """
    from pydicom.uid import UID

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    groups: dict[str, SeriesInfo] = {}
    stubs: list[tuple[Path, str, bool]] = []  # files without image attributes: series, image SOP class?
    n_dicom = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None:
            continue
        n_dicom += 1
        sop = str(getattr(ds, "SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
        modality = str(ds.get("Modality", "OT") or "OT")
        uid = str(ds.get("SeriesInstanceUID", "") or "no-series-uid")
        key = series_key(uid)
        if sop == _DICOMDIR_SOP or modality in _NON_IMAGE_MODALITIES:
            continue
        if "Rows" not in ds:
            stubs.append((path, key, not sop or "Image Storage" in getattr(UID(sop), "name", "")))
            continue
        if key not in groups:
            num = ds.get("SeriesNumber")
            groups[key] = SeriesInfo(
                key, modality, int(num) if num not in (None, "") else None, int(ds.Rows), int(ds.Columns)
            )
        groups[key].files.append(path)
    _truncated(stubs, groups)
    if not groups:
        what = "DICOM files without image data" if n_dicom else "no DICOM files"
        raise DataError(folder, f"{what} found in this folder")
    return sorted(groups.values(), key=lambda s: (s.series_number is None, s.series_number or 0, s.key))


def choose_series(folder: Path, series_list: list[SeriesInfo], series: int | str | None) -> SeriesInfo:
    """Pick one series by index, key or full UID; several series and no choice is an error listing them."""
    listing = "; ".join(s.describe(i) for i, s in enumerate(series_list))
    if series is None:
        if len(series_list) == 1:
            return series_list[0]
        raise DataError(
            folder,
            f"folder holds {len(series_list)} DICOM series; choose one with series=INDEX or KEY: {listing}",
        )
    if isinstance(series, int) or (isinstance(series, str) and series.isdigit() and len(series) < 8):
        idx = int(series)
        if 0 <= idx < len(series_list):
            return series_list[idx]
        raise DataError(folder, f"series index {idx} out of range; available: {listing}")
    wanted = str(series)
    for s in series_list:
        if s.key in (wanted, series_key(wanted)):
            return s
    raise DataError(folder, f"no series with key {wanted!r}; available: {listing}")


def _slice_order(
    folder: Path, what: str, headers: list[tuple[Path, Any]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, step, row cosines, column cosines, positions)`` of a series' slices: ``order`` sorts them by
    position along the slice normal (the volume's third voxel axis)."""
    shapes = {(int(h.Rows), int(h.Columns)) for _, h in headers}
    if len(shapes) > 1:
        raise DataError(folder, f"{what}: slices have different sizes {sorted(shapes)}")
    try:
        iops = np.stack(
            [floats(h.ImageOrientationPatient, 6, "ImageOrientationPatient", p) for p, h in headers]
        )
        ipps = np.stack([floats(h.ImagePositionPatient, 3, "ImagePositionPatient", p) for p, h in headers])
    except AttributeError:
        raise DataError(folder, f"{what}: slices lack ImagePositionPatient/ImageOrientationPatient") from None
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise DataError(folder, f"{what}: slices have different orientations (a localizer mixed in?)")
    row_cos, col_cos = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 1e-3:
        raise DataError(
            folder, f"{what}: degenerate ImageOrientationPatient (row and column cosines parallel)"
        )
    normal /= np.linalg.norm(normal)
    order, step = sort_and_step(ipps, normal, folder, what)
    return order, step, row_cos, col_cos, ipps


def series_files_in_volume_order(folder: str | Path, series: int | str | None = None) -> list[Path]:
    """The files of the series :func:`load_dicom_series` reads from ``folder``, in the order of the volume's
    third voxel axis (frame ``k`` of the volume is file ``k``): what a DICOM-SEG of a predicted label map refers
    to. A single (possibly multi-frame) file is returned as is."""
    folder = Path(folder)
    info = choose_series(folder, list_dicom_series(folder), series)
    if len(info.files) == 1:
        return list(info.files)
    headers = [(p, _read_header(p)) for p in info.files]
    order = _slice_order(folder, f"series {info.key}", headers)[0]
    return [headers[int(i)][0] for i in order]


def load_dicom_series(folder: str | Path, series: int | str | None = None, *, max_voxels: int):  # -> Volume
    """Read one series from a folder into a :class:`~salt_seg.data.volume.Volume` (values in HU for CT).

    Raises:
        DataError: no series, several series and no choice, mixed image sizes or orientations, duplicate or
            unevenly spaced slices, undecodable pixels, too many voxels, NaN/Inf.
    """
    import pydicom

    folder = Path(folder)
    info = choose_series(folder, list_dicom_series(folder), series)
    if len(info.files) == 1:
        vol = load_dicom_file(info.files[0], max_voxels=max_voxels)
        vol.name = f"series-{info.key}"
        return vol
    # the series' files were listed as DICOM, so each header reads
    headers: list[tuple[Path, Any]] = [(p, _read_header(p)) for p in info.files]
    first = headers[0][1]
    multi = [p for p, h in headers if int(h.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise DataError(
            folder, f"series {info.key} mixes {len(multi)} multi-frame file(s) with single slices"
        )
    check_size(
        folder, info.rows, info.columns, len(headers), int(first.get("SamplesPerPixel", 1) or 1), max_voxels
    )
    what = f"series {info.key}"
    order, step, row_cos, col_cos, ipps = _slice_order(folder, what, headers)
    spacing_all = np.stack([floats(h.get("PixelSpacing", [1, 1]), 2, "PixelSpacing", p) for p, h in headers])
    if not np.allclose(spacing_all, spacing_all[0], rtol=0, atol=1e-5):  # compare loosely, keep the value
        spacings = sorted({tuple(float(v) for v in row) for row in spacing_all})
        raise DataError(folder, f"{what}: slices have different pixel spacings {spacings}")
    spacing_rc = spacing_all[0].astype(np.float64)
    frames = []
    rescaled = False
    for idx in order:
        path = headers[idx][0]
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
            raise DataError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
        arr, raw = decode_pixels(ds, path)
        if raw and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
            rs = rescale_of(ds)
            if rs is not None:
                arr = arr * np.float32(rs[0]) + np.float32(rs[1])
                rescaled = True
        frames.append(monochrome1(arr[0], ds))
    stack = np.stack(frames)
    affine = dicom_affine(row_cos, col_cos, spacing_rc, step, ipps[order[0]])
    meta = {
        "format": "dicom",
        "files": len(order),
        "series_key": info.key,
        "rescaled": rescaled,
        "path": folder,
    }
    return frames_to_volume(stack, affine, first, f"series-{info.key}", meta)


def load_dicom_file(path: str | Path, *, max_voxels: int):  # -> Volume
    """Read one DICOM file: a single slice, or a (enhanced or legacy) multi-frame image.

    Enhanced multi-frame files take position, orientation, pixel spacing and rescale per frame from their
    functional groups and are sorted along the slice normal like a series. Files without per-frame positions
    keep their frames in file order, spaced by Spacing Between Slices (or Slice Thickness, or 1 mm).

    Raises:
        DataError: not DICOM, no image data, undecodable or truncated pixels, inconsistent frames, NaN/Inf.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise DataError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
    modality = str(ds.get("Modality", "OT") or "OT")
    if "PixelData" not in ds and "FloatPixelData" not in ds or modality in _NON_IMAGE_MODALITIES:
        raise DataError(path, f"DICOM file holds no image data (modality {modality})")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    check_size(path, int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), n_frames, samples, max_voxels)
    arr, raw = decode_pixels(ds, path)
    if arr.shape[0] != n_frames:
        raise DataError(path, f"pixel data holds {arr.shape[0]} frames, header says {n_frames}")
    key = series_key(str(ds.get("SeriesInstanceUID", path.name)))
    pos_items: list[Any] = [frame_group(ds, i, "PlanePositionSequence") for i in range(n_frames)]
    have_positions = n_frames > 1 and all(p is not None and "ImagePositionPatient" in p for p in pos_items)
    orient = frame_group(ds, 0, "PlaneOrientationSequence") or ds
    measures = frame_group(ds, 0, "PixelMeasuresSequence") or ds
    iop = orient.get("ImageOrientationPatient") or ds.get("ImageOrientationPatient") or [1, 0, 0, 0, 1, 0]
    iop = floats(iop, 6, "ImageOrientationPatient", path)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 1e-3:
        raise DataError(path, "degenerate ImageOrientationPatient (row and column cosines parallel)")
    normal /= np.linalg.norm(normal)
    spacing_rc = floats(
        measures.get("PixelSpacing") or ds.get("PixelSpacing") or [1, 1], 2, "PixelSpacing", path
    )
    thickness = (
        measures.get("SpacingBetweenSlices")
        or ds.get("SpacingBetweenSlices")
        or measures.get("SliceThickness")
        or ds.get("SliceThickness")
        or 1.0
    )
    if have_positions:
        ipps = np.stack([floats(p.ImagePositionPatient, 3, "ImagePositionPatient", path) for p in pos_items])
        order, step = sort_and_step(ipps, normal, path, "frames")
        origin = ipps[order[0]]
    else:
        if n_frames > 1:
            logger.warning(
                "%s: no per-frame positions; frames kept in file order, %.3g mm apart",
                path.name,
                float(thickness),
            )
        order = np.arange(n_frames)
        step = normal * float(thickness)
        ipp = ds.get("ImagePositionPatient") or (
            pos_items[0].get("ImagePositionPatient") if pos_items[0] else None
        )
        origin = floats(ipp, 3, "ImagePositionPatient", path) if ipp else np.zeros(3)
    rescaled = False
    if raw and samples == 1:
        for i in range(n_frames):
            rs = rescale_of(frame_group(ds, i, "PixelValueTransformationSequence") or ds)
            if rs is not None:
                arr[i] = arr[i] * np.float32(rs[0]) + np.float32(rs[1])
                rescaled = True
    stack = monochrome1(arr[order], ds)
    affine = dicom_affine(row_cos, col_cos, spacing_rc, step, origin)
    meta = {
        "format": "dicom",
        "files": 1,
        "frames": n_frames,
        "series_key": key,
        "rescaled": rescaled,
        "path": path,
    }
    return frames_to_volume(stack, affine, ds, f"series-{key}", meta)
