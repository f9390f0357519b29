"""RTSTRUCT out and in (rt-utils): label maps as contours that a treatment-planning system reads.

An RT Structure Set stores each structure as closed planar contours on the images of a series, not as voxels. A
label map written here (one ROI per class, named and coloured as in the NIfTI sidecars) and read back is the same
mask up to the contours' rasterisation: boundary voxels may flip (rt-utils traces pixel boundaries with OpenCV and
fills polygons back; ``approximate_contours=False`` keeps every boundary vertex). :func:`read_rtstruct` places
each of rt-utils' mask slices by its image's SOP Instance UID, so the series' file order does not matter.

rt-utils is an optional extra (``pip install salt-seg[rtstruct]``; it brings OpenCV).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.dicom import series_files_in_volume_order
from salt_seg.data.dicom_seg import series_folder
from salt_seg.data.errors import DataError
from salt_seg.geometry import LPS_TO_RAS
from salt_seg.io import atomic_path

logger = logging.getLogger(__name__)


def _rt_utils() -> Any:
    try:
        import rt_utils
    except ImportError:
        raise ImportError(
            "RTSTRUCT needs rt-utils, an optional extra: pip install 'salt-seg[rtstruct]'"
        ) from None
    return rt_utils


def _order(series_data: list[Any], path: Path) -> np.ndarray:
    """For each of rt-utils' slices (its own sort), the index ``k`` of that image in the label map's frames."""
    import pydicom

    uids = [
        str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for f in series_files_in_volume_order(path)
    ]
    index = {u: k for k, u in enumerate(uids)}
    try:
        return np.array([index[str(ds.SOPInstanceUID)] for ds in series_data])
    except KeyError as exc:
        raise DataError(
            path, f"image {exc} of the structure set's series is not in the series read"
        ) from None


def write_rtstruct(
    label_map: np.ndarray,
    source: str | Path,
    class_names: Mapping[int, str],
    out_path: str | Path,
    *,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
) -> Path:
    """Write ``label_map`` (``I x J x K`` class ids on a DICOM series' voxel grid, as written to NIfTI) as an RT
    Structure Set of that series (folder or zip), one ROI per non-empty class, atomically.

    Raises:
        DataError: not a single-frame DICOM series, or a label map of another shape.
        ImportError: rt-utils is not installed.
    """
    rt_utils = _rt_utils()
    out_path = Path(out_path)
    with series_folder(source) as folder:
        try:
            rtstruct = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(folder))
        except Exception as exc:  # noqa: BLE001 - rt-utils raises bare Exceptions
            raise DataError(Path(source), f"cannot start a structure set on this series ({exc})") from None
        order = _order(rtstruct.series_data, folder)
        rows, cols = int(rtstruct.series_data[0].Rows), int(rtstruct.series_data[0].Columns)
        lab = np.asarray(label_map)
        if lab.shape != (cols, rows, len(order)):
            raise DataError(
                Path(source), f"the label map has shape {lab.shape}, the series is {(cols, rows, len(order))}"
            )
        spacing = [float(v) for v in rtstruct.series_data[0].PixelSpacing]
        if abs(spacing[0] - spacing[1]) > 1e-6 * max(spacing):
            raise DataError(
                Path(source),
                f"RTSTRUCT output needs square pixels (PixelSpacing {spacing}): rt-utils places contours wrongly "
                "otherwise; use --format dicom-seg",
            )
        # rt-utils places a mask given as (rows, columns, slices) where it belongs (checked in patient space)
        frames = np.transpose(lab, (1, 0, 2))[:, :, order]
        for cid in sorted(int(c) for c in class_names):
            mask = frames == cid
            if not mask.any():
                continue  # an ROI needs at least one contour
            color = list(colors[cid]) if colors and cid in colors else None
            rtstruct.add_roi(
                mask=mask, name=str(class_names[cid])[:64], color=color, approximate_contours=False
            )
        rtstruct.set_series_description("salt_seg structures (research use only)")
        with atomic_path(out_path, suffix=".dcm") as tmp:
            rtstruct.save(str(tmp))
    return out_path


def roi_names(rt_path: str | Path) -> dict[int, str]:
    """``{label value: ROI name}`` of an RT Structure Set, values 1, 2, ... in the file's order (as
    :func:`read_rtstruct` gives them); needs only pydicom.

    Raises:
        DataError: not a readable RT Structure Set.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(rt_path, stop_before_pixels=True)
        rois = list(ds.StructureSetROISequence)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for foreign files
        raise DataError(Path(rt_path), f"not a readable RT Structure Set ({type(exc).__name__})") from None
    return {value: str(r.ROIName) for value, r in enumerate(rois, start=1)}


def read_rtstruct(rt_path: str | Path, like: Any) -> tuple[np.ndarray, dict[int, str]]:
    """An RT Structure Set as ``(label map on the voxel grid of the image volume like, {value: ROI name})``.

    Each closed planar contour is mapped from patient coordinates onto ``like``'s voxel grid and filled (OpenCV's
    polygon fill, boundary pixels included, as rt-utils fills them); contours on one slice combine by XOR, so
    holes stay holes. ROIs get values 1, 2, ... in the file's order; where they overlap, the later one wins.

    Raises:
        DataError: not a structure set, or contours off ``like``'s slices.
        ImportError: OpenCV (the rtstruct extra) is not installed.
    """
    import pydicom

    try:
        import cv2
    except ImportError:
        raise ImportError("RTSTRUCT needs the rtstruct extra: pip install 'salt-seg[rtstruct]'") from None

    rt_path = Path(rt_path)
    try:
        ds = pydicom.dcmread(rt_path)
        rois = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
        contours = {
            int(c.ReferencedROINumber): list(c.get("ContourSequence", [])) for c in ds.ROIContourSequence
        }
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for foreign files
        raise DataError(rt_path, f"not a readable RT Structure Set ({type(exc).__name__})") from None
    to_voxel = np.linalg.inv(np.asarray(like.affine, dtype=np.float64)) @ LPS_TO_RAS
    ni, nj, nk = like.shape
    out = np.zeros((ni, nj, nk), dtype=np.int16)
    names = {}
    for value, (number, name) in enumerate(rois.items(), start=1):
        names[value] = name
        slices: dict[int, np.ndarray] = {}
        for contour in contours.get(number, []):
            pts = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            ijk = (to_voxel[:3, :3] @ pts.T + to_voxel[:3, 3:4]).T
            k = np.rint(ijk[:, 2])
            if np.abs(ijk[:, 2] - k).max() > 0.1 or not (0 <= k[0] < nk) or (k != k[0]).any():
                raise DataError(
                    rt_path, f"ROI {name!r}: a contour does not lie on one slice of the image series"
                )
            plane = slices.setdefault(
                int(k[0]), np.zeros((nj, ni), dtype=np.uint8)
            )  # rows x columns for OpenCV
            poly = np.zeros_like(plane)
            cv2.fillPoly(poly, [np.rint(ijk[:, :2]).astype(np.int32)], 1)  # points as (x = column, y = row)
            plane ^= poly
        for k, plane in slices.items():
            out[:, :, k][plane.T.astype(bool)] = value
    return out, names
