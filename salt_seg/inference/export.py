"""Writing label maps and probability maps as NIfTI in exactly the source image's geometry.

* The array is in the **source file's own voxel grid** (``PreparedVolume.to_source``): same shape and voxel order.
* NIfTI inputs: the source header is copied, so qform and sform matrices *and codes*, pixdim, units and
  orientation are the file's own; only the data type, scaling, intent and description change.
* Other inputs (DICOM series, NRRD/MHA, zips): the affine is the reader's RAS matrix (DICOM's LPS direction
  cosines, spacing and origin converted with :data:`salt_seg.geometry.LPS_TO_RAS`); it is stored as sform (code 1, scanner) and as
  qform when a qform can hold it exactly (no shear), otherwise the qform code is 0 so readers use the sform.
* Label maps are ``uint8`` (``uint16`` when a class id exceeds 255) with NIfTI intent ``label``.
* Probability maps are one 4-D file (x, y, z, class in class-id order), stored as ``uint8`` with
  ``scl_slope = 1/255`` so readers get probabilities in ``[0, 1]`` (2-3 significant digits).
* Every file is written by :func:`salt_seg.io.save_nifti` (temporary name in the same folder, then a rename); an
  existing file is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from salt_seg.data.volume import Geometry
from salt_seg.io import save_nifti

LABEL_DESCRIPTION = "salt_seg label map"
PROBABILITY_DESCRIPTION = "salt_seg class probabilities"


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless ``overwrite``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false (the message names the file).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass --force (overwrite=True) to replace it")
    return path


def read_source_header(path: str | Path) -> Any | None:
    """The NIfTI header of a source image (``None`` for other formats or unreadable files)."""

    p = Path(path)
    if not p.is_file() or not p.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        img = nib.load(str(p))
    except Exception:  # noqa: BLE001 - the reader reports bad files; here a header is only a nicety
        return None
    return img.header if isinstance(img, nib.Nifti1Image | nib.Nifti2Image) else None


def label_dtype(max_id: int) -> type:
    """``uint8`` for class ids up to 255, ``uint16`` up to 65535."""
    if max_id > 65535:
        raise ValueError(f"class id {max_id} does not fit a uint16 label map")
    return np.uint8 if max_id <= 255 else np.uint16


def write_label_map(
    path: str | Path,
    labels: np.ndarray,
    geometry: Geometry,
    class_names: dict[int, str] | None = None,
    *,
    header: Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label map in the source geometry.

    Args:
        path: ``.nii.gz`` or ``.nii`` file.
        labels: ``I x J x K`` integer class ids on the source grid (``geometry.shape``).
        geometry: the source grid (``PreparedVolume.source`` or ``Volume.geometry``).
        class_names: class id -> name; sets the data type from the largest id and checks ``labels`` holds no
            other value.
        header: the source NIfTI header (:func:`read_source_header`) to copy qform/sform and codes from.
        overwrite: replace an existing file.

    Raises:
        ValueError: shape mismatch, negative or unknown labels.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    arr = np.asarray(labels)
    if arr.shape != tuple(geometry.shape):
        raise ValueError(
            f"{path}: label map shape {arr.shape} is not the source shape {tuple(geometry.shape)}"
        )
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{path}: negative label values")
    found = set(np.unique(arr).tolist()) - {0}
    top = max(found, default=0)
    if class_names is not None:
        unknown = sorted(found - set(int(k) for k in class_names))
        if unknown:
            raise ValueError(
                f"{path}: label values {unknown[:5]} are not among the classes {sorted(class_names)}"
            )
        top = max([top, *(int(k) for k in class_names)])
    return save_nifti(
        check_writable(path, overwrite),
        arr,
        geometry.affine,
        dtype=label_dtype(int(top)),
        header=header,
        slope=1.0,
        intent="label",
        cal=(0, top),
        description=LABEL_DESCRIPTION,
    )


def write_probability_map(
    path: str | Path,
    probabilities: np.ndarray,
    geometry: Geometry,
    *,
    header: Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``C x I x J x K`` probabilities (source grid) as a 4-D ``uint8`` NIfTI with slope ``1/255``."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 4 or p.shape[1:] != tuple(geometry.shape):
        raise ValueError(f"{path}: probabilities shape {p.shape} is not C x {tuple(geometry.shape)}")
    q = np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)
    return save_nifti(
        check_writable(path, overwrite),
        np.moveaxis(q, 0, -1),
        geometry.affine,
        dtype=np.uint8,
        header=header,
        slope=1.0 / 255.0,
        intent="none",
        cal=(0.0, 1.0),
        description=PROBABILITY_DESCRIPTION,
    )
