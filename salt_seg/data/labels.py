"""Label maps: read, check (integral, within the declared classes) and match to their image's grid."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from salt_seg.data.dicom_seg import dicom_modality, read_dicom_seg
from salt_seg.data.errors import DataError
from salt_seg.data.readers import (
    DEFAULT_MAX_VOXELS,
    check_finite,
    file_kind,
    read_itk_array,
    read_nifti_array,
    strip_suffix,
)
from salt_seg.data.rtstruct import read_rtstruct
from salt_seg.data.volume import Volume, same_geometry

logger = logging.getLogger(__name__)


def load_label(
    path: str | Path,
    like: Volume | None = None,
    *,
    classes: Iterable[int] | None = None,
    remap: Mapping[int, int] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a label map as an int16 :class:`Volume` (``1 x I x J x K``), checked against its image.

    Args:
        path: label file (NIfTI, NRRD/MHA, PNG/TIFF, ...).
        like: the image the label belongs to; shapes and affines must agree. A label stored with flipped or
            permuted axes (e.g. LAS next to an RAS image) on the same physical grid is reoriented onto the
            image's voxel grid.
        classes: the declared class ids (background 0 is always allowed); other values are an error.
        remap: value substitutions applied first (e.g. ``{255: 1}`` for 0/255 binary masks).
        max_voxels: voxel cap, as for :func:`load_volume`.

    Raises:
        DataError: unreadable, non-integer or negative values, values outside ``classes``, colour labels, or a
            shape/geometry mismatch with ``like``.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "nifti":
        array, affine = read_nifti_array(path, max_voxels, multichannel=False, raw=True)
        is_2d = False
    elif kind in ("itk", "picture"):
        array, affine, is_2d = read_itk_array(path, max_voxels, raw=True)
    elif kind == "dicom" and (modality := dicom_modality(path)) in ("SEG", "RTSTRUCT"):
        if like is None:
            raise DataError(
                path, "a DICOM-SEG or RTSTRUCT label map is read onto its image series; give the image"
            )
        if modality == "SEG":
            seg_array, _ = read_dicom_seg(path, like)
        else:
            seg_array, _ = read_rtstruct(path, like)
        array, affine, is_2d = seg_array[None], np.asarray(like.affine), bool(like.is_2d)
    else:
        raise DataError(
            path, f"label maps must be NIfTI, NRRD/MHA, PNG/TIFF, DICOM-SEG or RTSTRUCT files, not {kind}"
        )
    if array.shape[0] > 1:
        if all(np.array_equal(array[0], array[c]) for c in range(1, array.shape[0])):
            array = array[:1]
        else:
            raise DataError(
                path, f"label map has {array.shape[0]} differing colour channels; store class ids"
            )
    if array.dtype.kind == "f":
        check_finite(path, array)
        if not np.array_equal(array, np.round(array)):
            raise DataError(path, "label values are not integers (a resampled or probability map?)")
    elif array.dtype.kind not in "iub":
        raise DataError(path, f"label map has unsupported voxel type {array.dtype}")
    values = np.unique(array)
    if remap:
        lut_src = np.asarray(list(remap), dtype=np.float64)
        out = array.astype(np.int64)
        for src, dst in zip(lut_src, remap.values(), strict=True):
            out[array == src] = int(dst)
        array = out
        values = np.unique(array)
    if values.size and values.min() < 0:
        raise DataError(path, f"label map has negative values (min {values.min():g})")
    if values.size and values.max() > np.iinfo(np.int16).max:
        raise DataError(path, f"label value {values.max():g} is too large for a class id")
    if classes is not None:
        allowed = {0, *(int(c) for c in classes)}
        extra = sorted(int(v) for v in values if int(v) not in allowed)
        if extra:
            shown = extra[:10] + (["..."] if len(extra) > 10 else [])
            raise DataError(
                path, f"label values {shown} are not among the declared classes {sorted(allowed)}"
            )
    vol = Volume(
        array.astype(np.int16),
        affine,
        modality="label",
        name=strip_suffix(path.name),
        is_2d=is_2d,
        channel_names=["label"],
        meta={"format": kind},
    )
    if like is not None:
        vol = _match_geometry(path, vol, like)
    return vol


def _match_geometry(path: Path, label: Volume, image: Volume) -> Volume:
    def on_image_grid(array: np.ndarray) -> Volume:
        return Volume(
            array,
            image.affine,
            modality="label",
            name=label.name,
            is_2d=image.is_2d,
            channel_names=["label"],
            meta=label.meta,
        )

    if same_geometry(label, image):
        return on_image_grid(label.array)
    lab_ras, img_ras = label.to_ras(), image.to_ras()
    if same_geometry(lab_ras, img_ras):
        logger.info(
            "%s: label stored as %s, image as %s; reoriented onto the image grid",
            path.name,
            label.axcodes,
            image.axcodes,
        )
        return on_image_grid(img_ras.restore_orientation(lab_ras.array))
    if sorted(label.shape) != sorted(image.shape) or lab_ras.shape != img_ras.shape:
        raise DataError(
            path, f"label shape {label.shape} does not match image shape {image.shape} ({image.name})"
        )
    diff = np.abs(lab_ras.affine - img_ras.affine)
    raise DataError(
        path,
        f"label geometry does not match image {image.name}: affines differ by up to {diff[:3, 3].max():.4g} mm "
        f"in origin and {diff[:3, :3].max():.4g} in the axes (label {label.axcodes} "
        f"{tuple(round(s, 4) for s in label.spacing)} mm, image {image.axcodes} "
        f"{tuple(round(s, 4) for s in image.spacing)} mm)",
    )
