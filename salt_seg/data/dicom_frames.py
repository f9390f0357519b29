"""DICOM frames to a volume: sorting along the slice normal, spacing checks, affine, values in physical units.

Shared by series folders and single (multi-frame) files in :mod:`salt_seg.data.dicom`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.errors import DataError
from salt_seg.data.volume import Volume
from salt_seg.geometry import LPS_TO_RAS

#: slice gaps may differ from their median by this fraction (plus 0.01 mm) before the series is refused.
SPACING_TOLERANCE = 0.05


# --- geometry -------------------------------------------------------------------------------------------------
def floats(value: Any, n: int, what: str, path: Path) -> np.ndarray:
    """``n`` finite floats from a multi-valued DICOM element, or a DataError naming ``what``."""
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"malformed {what}") from None
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DataError(path, f"malformed {what}: expected {n} finite numbers")
    return arr


def sort_and_step(
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


def dicom_affine(
    row_cos: np.ndarray, col_cos: np.ndarray, spacing_rc: np.ndarray, step: np.ndarray, origin: np.ndarray
) -> np.ndarray:
    """RAS affine for voxel order (column i, row j, slice k); DICOM geometry is LPS."""
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing_rc[1]  # moving along a row = next column
    lps[:3, 1] = col_cos * spacing_rc[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


# --- pixels ---------------------------------------------------------------------------------------------------
def check_size(path: Path, rows: int, cols: int, frames: int, samples: int, max_voxels: int) -> None:
    n = int(rows) * int(cols) * int(frames) * int(samples)
    if n == 0:
        raise DataError(path, "empty image (zero rows, columns or frames)")
    if n > max_voxels:
        raise DataError(path, f"image has {n} voxels, more than the cap of {max_voxels} (max_voxels)")


def decode_pixels(ds: Any, path: Path) -> tuple[np.ndarray, bool]:
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


def rescale_of(item: Any) -> tuple[float, float] | None:
    """(slope, intercept) from a dataset or functional-group item, or ``None`` when absent."""
    seq = item.get("PixelValueTransformationSequence") if hasattr(item, "get") else None
    src = seq[0] if seq else item
    slope, intercept = src.get("RescaleSlope"), src.get("RescaleIntercept")
    if slope is None and intercept is None:
        return None
    return float(slope if slope not in (None, "") else 1.0), float(
        intercept if intercept not in (None, "") else 0.0
    )


def monochrome1(arr: np.ndarray, ds: Any) -> np.ndarray:
    # MONOCHROME1 stores "higher = darker" (some X-ray); invert so every image reads "higher = brighter".
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        return (arr.max() + arr.min()) - arr
    return arr


def frames_to_volume(
    stack: np.ndarray, affine: np.ndarray, ds: Any, name: str, meta: dict[str, Any]
):  # -> Volume

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


def frame_group(ds: Any, i: int, name: str) -> Any | None:
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
