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

from salt_seg.data.errors import DataError

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: slice gaps may differ from their median by this fraction (plus 0.01 mm) before the series is refused.
SPACING_TOLERANCE = 0.05
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
    """The dataset without pixels, or ``None`` when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError):
        return None


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """Enumerate the image series under ``folder`` (recursively), ordered by series number then key.

    Raises:
        FileNotFoundError: the folder does not exist.
        DataError: no DICOM image files were found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    groups: dict[str, SeriesInfo] = {}
    n_dicom = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None:
            continue
        n_dicom += 1
        sop = str(getattr(ds, "SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
        modality = str(ds.get("Modality", "OT") or "OT")
        if sop == _DICOMDIR_SOP or modality in _NON_IMAGE_MODALITIES or "Rows" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "no-series-uid")
        key = series_key(uid)
        if key not in groups:
            num = ds.get("SeriesNumber")
            groups[key] = SeriesInfo(
                key, modality, int(num) if num not in (None, "") else None, int(ds.Rows), int(ds.Columns)
            )
        groups[key].files.append(path)
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


# --- geometry -------------------------------------------------------------------------------------------------
def _floats(value: Any, n: int, what: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"malformed {what}") from None
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DataError(path, f"malformed {what}: expected {n} finite numbers")
    return arr


def _sort_and_step(
    positions: np.ndarray, normal: np.ndarray, path: Path, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Order by position along ``normal``; check the gaps agree; return (order, slice step vector in LPS mm)."""
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    if len(order) < 2:
        return order, normal
    gaps = np.diff(dist[order])
    if (gaps < 1e-3).any():
        raise DataError(
            path,
            f"{what}: {int((gaps < 1e-3).sum())} duplicate slice position(s) (several stacks, time points or "
            "echoes mixed in one series?)",
        )
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > SPACING_TOLERANCE * median + 0.01
    if bad.any():
        raise DataError(
            path,
            f"{what}: inconsistent slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (median "
            f"{median:.3f} mm; a missing slice?)",
        )
    step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    return order, step


def _affine(
    row_cos: np.ndarray, col_cos: np.ndarray, spacing_rc: np.ndarray, step: np.ndarray, origin: np.ndarray
) -> np.ndarray:
    """RAS affine for voxel order (column i, row j, slice k); DICOM geometry is LPS."""
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing_rc[1]  # moving along a row = next column
    lps[:3, 1] = col_cos * spacing_rc[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


# --- pixels ---------------------------------------------------------------------------------------------------
def _check_size(path: Path, rows: int, cols: int, frames: int, samples: int, max_voxels: int) -> None:
    n = int(rows) * int(cols) * int(frames) * int(samples)
    if n == 0:
        raise DataError(path, "empty image (zero rows, columns or frames)")
    if n > max_voxels:
        raise DataError(path, f"image has {n} voxels, more than the cap of {max_voxels} (max_voxels)")


def _pixels(ds: Any, path: Path) -> tuple[np.ndarray, bool]:
    """Decoded stored values as float32 ``frames x rows x cols [x samples]`` and whether they are raw.

    Falls back to SimpleITK (GDCM) for transfer syntaxes pydicom has no decoder for here; GDCM already applies
    the rescale, so the second value says whether the caller must still apply it.
    """
    try:
        arr = ds.pixel_array
        raw = True
    except Exception as pydicom_exc:  # noqa: BLE001 - any decoder failure falls back to GDCM
        import SimpleITK as sitk

        try:
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            raw = False
        except RuntimeError:
            raise DataError(path, f"pixel data is truncated or cannot be decoded ({pydicom_exc})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    arr = np.asarray(arr)
    if frames == 1 and arr.ndim == (3 if samples > 1 else 2):
        arr = arr[None]
    expected = 4 if samples > 1 else 3
    if arr.ndim != expected:
        raise DataError(path, f"unexpected pixel array shape {arr.shape} for {frames} frame(s)")
    return arr.astype(np.float32, copy=False), raw


def _rescale(item: Any) -> tuple[float, float] | None:
    """(slope, intercept) from a dataset or functional-group item, or ``None`` when absent."""
    seq = item.get("PixelValueTransformationSequence") if hasattr(item, "get") else None
    src = seq[0] if seq else item
    slope, intercept = src.get("RescaleSlope"), src.get("RescaleIntercept")
    if slope is None and intercept is None:
        return None
    return float(slope if slope not in (None, "") else 1.0), float(
        intercept if intercept not in (None, "") else 0.0
    )


def _monochrome1(arr: np.ndarray, ds: Any) -> np.ndarray:
    # MONOCHROME1 stores "higher = darker" (some X-ray); invert so every image reads "higher = brighter".
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        return (arr.max() + arr.min()) - arr
    return arr


def _volume(stack: np.ndarray, affine: np.ndarray, ds: Any, name: str, meta: dict[str, Any]):  # -> Volume
    from salt_seg.data.volume import Volume

    if stack.ndim == 4:  # frames x rows x cols x samples -> samples x cols x rows x frames
        array = np.ascontiguousarray(np.transpose(stack, (3, 2, 1, 0)))
        names = ["R", "G", "B"][: array.shape[0]] if array.shape[0] <= 3 else []
    else:
        array = np.ascontiguousarray(np.transpose(stack, (2, 1, 0)))[None]
        names = []
    if not np.isfinite(array).all():
        raise DataError(meta.get("path"), "image contains NaN or Inf values")
    meta = {k: v for k, v in meta.items() if k != "path"}
    return Volume(
        array,
        affine,
        modality=str(ds.get("Modality", "OT") or "OT"),
        name=name,
        channel_names=names,
        meta=meta,
    )


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
    headers = [(p, _read_header(p)) for p in info.files]
    first = headers[0][1]
    multi = [p for p, h in headers if int(h.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise DataError(
            folder, f"series {info.key} mixes {len(multi)} multi-frame file(s) with single slices"
        )
    _check_size(
        folder, info.rows, info.columns, len(headers), int(first.get("SamplesPerPixel", 1) or 1), max_voxels
    )
    what = f"series {info.key}"
    shapes = {(int(h.Rows), int(h.Columns)) for _, h in headers}
    if len(shapes) > 1:
        raise DataError(folder, f"{what}: slices have different sizes {sorted(shapes)}")
    try:
        iops = np.stack(
            [_floats(h.ImageOrientationPatient, 6, "ImageOrientationPatient", p) for p, h in headers]
        )
        ipps = np.stack([_floats(h.ImagePositionPatient, 3, "ImagePositionPatient", p) for p, h in headers])
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
    order, step = _sort_and_step(ipps, normal, folder, what)
    spacings = {
        tuple(np.round(_floats(h.get("PixelSpacing", [1, 1]), 2, "PixelSpacing", p), 5)) for p, h in headers
    }
    if len(spacings) > 1:
        raise DataError(folder, f"{what}: slices have different pixel spacings {sorted(spacings)}")
    spacing_rc = np.asarray(next(iter(spacings)), dtype=np.float64)
    frames = []
    rescaled = False
    for idx in order:
        path = headers[idx][0]
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
            raise DataError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
        arr, raw = _pixels(ds, path)
        if raw and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
            rs = _rescale(ds)
            if rs is not None:
                arr = arr * np.float32(rs[0]) + np.float32(rs[1])
                rescaled = True
        frames.append(_monochrome1(arr[0], ds))
    stack = np.stack(frames)
    affine = _affine(row_cos, col_cos, spacing_rc, step, ipps[order[0]])
    meta = {
        "format": "dicom",
        "files": len(order),
        "series_key": info.key,
        "rescaled": rescaled,
        "path": folder,
    }
    return _volume(stack, affine, first, f"series-{info.key}", meta)


def _frame_groups(ds: Any, i: int, name: str) -> Any | None:
    """Item of functional group ``name`` for frame ``i`` (per-frame first, then shared), or ``None``."""
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if not seq:
            continue
        item = seq[i] if seq_name.startswith("PerFrame") and i < len(seq) else seq[0]
        sub = item.get(name)
        if sub:
            return sub[0]
    return None


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
    _check_size(path, int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), n_frames, samples, max_voxels)
    arr, raw = _pixels(ds, path)
    if arr.shape[0] != n_frames:
        raise DataError(path, f"pixel data holds {arr.shape[0]} frames, header says {n_frames}")
    key = series_key(str(ds.get("SeriesInstanceUID", path.name)))
    pos_items = [_frame_groups(ds, i, "PlanePositionSequence") for i in range(n_frames)]
    have_positions = n_frames > 1 and all(p is not None and "ImagePositionPatient" in p for p in pos_items)
    orient = _frame_groups(ds, 0, "PlaneOrientationSequence") or ds
    measures = _frame_groups(ds, 0, "PixelMeasuresSequence") or ds
    iop = orient.get("ImageOrientationPatient") or ds.get("ImageOrientationPatient") or [1, 0, 0, 0, 1, 0]
    iop = _floats(iop, 6, "ImageOrientationPatient", path)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 1e-3:
        raise DataError(path, "degenerate ImageOrientationPatient (row and column cosines parallel)")
    normal /= np.linalg.norm(normal)
    spacing_rc = _floats(
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
        ipps = np.stack([_floats(p.ImagePositionPatient, 3, "ImagePositionPatient", path) for p in pos_items])
        order, step = _sort_and_step(ipps, normal, path, "frames")
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
        origin = _floats(ipp, 3, "ImagePositionPatient", path) if ipp else np.zeros(3)
    rescaled = False
    if raw and samples == 1:
        for i in range(n_frames):
            rs = _rescale(_frame_groups(ds, i, "PixelValueTransformationSequence") or ds)
            if rs is not None:
                arr[i] = arr[i] * np.float32(rs[0]) + np.float32(rs[1])
                rescaled = True
    stack = _monochrome1(arr[order], ds)
    affine = _affine(row_cos, col_cos, spacing_rc, step, origin)
    meta = {
        "format": "dicom",
        "files": 1,
        "frames": n_frames,
        "series_key": key,
        "rescaled": rescaled,
        "path": path,
    }
    return _volume(stack, affine, ds, f"series-{key}", meta)
