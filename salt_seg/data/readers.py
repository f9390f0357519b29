"""Read any supported image or label file into a :class:`~salt_seg.data.volume.Volume`, refusing bad input.

=====================  ==========================================================================================
input                  reader
=====================  ==========================================================================================
``.nii``, ``.nii.gz``  nibabel (truncated files are detected; a header's voxel count is checked before reading)
folder of DICOM        pydicom: series enumeration, choice, sorting along the normal, spacing check, HU
``.dcm`` (or no ext.)  pydicom: single slice or (enhanced) multi-frame
``.zip``               safe extraction to a temporary folder, then the DICOM series (or single image) inside
``.nrrd .nhdr .mha``   SimpleITK (LPS geometry converted to RAS)
``.mhd``
``.png .jpg .tif``     SimpleITK, as a 2-D image (``C x W x H x 1``, see :mod:`salt_seg.data.volume`)
=====================  ==========================================================================================

Every failure is a :class:`~salt_seg.data.errors.DataError` naming the file: unreadable, truncated, not an
image, complex-valued, 4-D with several volumes (unless channels are asked for), NaN/Inf, empty, more voxels than
``max_voxels``, degenerate affine. Label maps have their own checks in :mod:`salt_seg.data.labels`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from salt_seg.data.archive import safe_extract_zip
from salt_seg.data.dicom import load_dicom_file, load_dicom_series
from salt_seg.data.errors import DataError
from salt_seg.data.volume import Volume, check_affine, same_geometry
from salt_seg.geometry import LPS_TO_RAS

logger = logging.getLogger(__name__)

#: default cap on the voxels one image may hold (512 Mi voxels = 2 GiB as float32).
DEFAULT_MAX_VOXELS = 512 * 1024 * 1024
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES + (".zip",)


def file_kind(path: str | Path) -> str:
    """``nifti``, ``itk``, ``picture``, ``dicom``, ``dicom-folder`` or ``zip`` (by name, then by content).

    Raises:
        FileNotFoundError: the path does not exist.
        DataError: the file type is not supported.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return "dicom-folder"
    name = path.name.lower()
    for kind, suffixes in (
        ("nifti", NIFTI_SUFFIXES),
        ("itk", ITK_SUFFIXES),
        ("picture", PICTURE_SUFFIXES),
        ("dicom", DICOM_SUFFIXES),
        ("zip", (".zip",)),
    ):
        if name.endswith(suffixes):
            return kind
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    raise DataError(
        path, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder"
    )


def strip_suffix(name: str) -> str:
    """File name without its image suffix (``case_0000.nii.gz`` -> ``case_0000``)."""
    low = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_voxels(path: Path, shape: Sequence[int], max_voxels: int) -> None:
    """Refuse empty images and images over the voxel cap, from the header's shape alone."""
    if any(int(s) <= 0 for s in shape) or not shape:
        raise DataError(path, f"empty image (shape {tuple(int(s) for s in shape)})")
    n = math.prod(int(s) for s in shape)
    if n > max_voxels:
        raise DataError(
            path,
            f"image has {n} voxels (shape {tuple(int(s) for s in shape)}), more than the cap of {max_voxels}",
        )


def check_finite(path: Path, array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(path, f"image contains {bad} NaN or Inf voxel(s)")


def _spatial_channels(path: Path, array: np.ndarray, multichannel: bool) -> np.ndarray:
    """``I x J x K [x 1 x C | x C]`` file arrays -> ``C x I x J x K``; 4-D data needs ``multichannel``."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vector images: x, y, z, t=1, c
        array = array[:, :, :, 0]
    if array.ndim == 3:
        return array[None]
    if array.ndim == 4:
        if array.shape[3] == 1:
            return array[None, ..., 0]
        if not multichannel:
            raise DataError(
                path,
                f"4-D image with {array.shape[3]} volumes along the 4th axis (shape {array.shape}); one 3-D "
                "volume is expected (multi-modal data: use a dataset format that maps modalities to channels)",
            )
        return np.moveaxis(array, 3, 0)
    raise DataError(path, f"unsupported image dimensionality {array.ndim} (shape {array.shape})")


# --- NIfTI ----------------------------------------------------------------------------------------------------
def read_nifti_array(
    path: Path, max_voxels: int, multichannel: bool, raw: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``C x I x J x K`` voxels (float32, or the stored dtype with ``raw``) and the RAS affine.

    The header's voxel count is checked against ``max_voxels`` and, for uncompressed files, against the file
    size before any voxel is read; a truncated ``.nii.gz`` fails while decompressing (never zero-filled).
    """

    try:
        img = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(path, f"not a readable NIfTI image ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image) or isinstance(img, nib.Cifti2Image):
        raise DataError(path, f"not a NIfTI volume ({type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    check_voxels(path, shape, max_voxels)
    dtype = img.get_data_dtype()
    if dtype.kind == "c":  # casting would silently drop the imaginary part
        raise DataError(
            path,
            f"complex-valued voxels ({dtype.name}); a real-valued image is expected (save the magnitude)",
        )
    if not path.name.lower().endswith(".gz"):
        needed = int(getattr(img.dataobj, "offset", 0)) + math.prod(shape) * img.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < needed:
            raise DataError(
                path, f"truncated NIfTI file: the header promises {needed} bytes, the file holds {have}"
            )
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataError(path, f"truncated or corrupt NIfTI data ({type(exc).__name__}: {exc})") from None
    affine = check_affine(img.affine, path)
    if not raw:
        data = data.astype(np.float32, copy=False)
    return _spatial_channels(path, np.asarray(data), multichannel), affine


# --- SimpleITK (NRRD, MHA, pictures) ---------------------------------------------------------------------------
def read_itk_array(path: Path, max_voxels: int, raw: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """``C x I x J x K`` voxels, the RAS affine (from ITK's LPS geometry) and whether the file is 2-D.

    The header is read first (``ReadImageInformation``) so the voxel cap applies before allocation.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DataError(path, "not a readable image (no reader recognises its contents)") from None
    size = tuple(int(s) for s in reader.GetSize())
    comps = int(reader.GetNumberOfComponents())
    check_voxels(path, (*size, comps), max_voxels)
    dim = len(size)
    if dim > 3 and not (dim == 4 and size[3] == 1):
        raise DataError(path, f"{dim}-D image (size {size}); one 2-D or 3-D image is expected")
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise DataError(
            path, f"truncated or corrupt image data ({str(exc).strip().splitlines()[-1][:120]})"
        ) from None
    arr = sitk.GetArrayViewFromImage(img)
    arr = np.array(arr, dtype=None if raw else np.float32)
    spatial = arr.ndim - (1 if comps > 1 else 0)
    # SimpleITK arrays are (z, y, x[, c]); ours are (x, y, z), channels first.
    axes = list(range(spatial))[::-1]
    arr = np.transpose(arr, axes + ([spatial] if comps > 1 else []))
    if comps > 1:
        arr = np.moveaxis(arr, -1, 0)
        if comps == 4:  # RGBA: drop alpha
            arr = arr[:3]
        arr = arr.reshape(arr.shape[0], *arr.shape[1:], *([1] * (4 - arr.ndim)))
    else:
        arr = arr.reshape(1, *arr.shape, *([1] * (3 - arr.ndim)))
    if arr.ndim == 5:
        arr = arr[..., 0]
    n3 = min(dim, 3)
    direction = np.eye(3)
    direction[:n3, :n3] = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:n3, :n3]
    spacing = np.ones(3)
    spacing[:n3] = img.GetSpacing()[:n3]
    origin = np.zeros(3)
    origin[:n3] = img.GetOrigin()[:n3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    affine = check_affine(LPS_TO_RAS @ lps, path)
    return arr, affine, dim == 2


# --- public API -------------------------------------------------------------------------------------------------
def load_volume(
    path: str | Path,
    *,
    series: int | str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    multichannel: bool = False,
) -> Volume:
    """Read an image file, DICOM folder or zip into a float32 :class:`Volume` (CT in HU), keeping its geometry.

    Args:
        path: a file or DICOM folder (see the module table).
        series: which DICOM series to read when a folder (or zip) holds several: index in
            :func:`~salt_seg.data.dicom.list_dicom_series` order, or its 8-hex-digit key.
        max_voxels: refuse images with more voxels than this (checked from the header, before reading data).
        multichannel: accept a 4-D NIfTI (MSD modalities) and return its 4th axis as channels.

    Returns:
        The volume in the file's own voxel order (call :meth:`Volume.to_ras` to canonicalise).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: bad input (see the module docstring); the message names the file.
    """
    path = Path(path)
    kind = file_kind(path)
    name = strip_suffix(path.name)
    if kind == "nifti":
        array, affine = read_nifti_array(path, max_voxels, multichannel, raw=False)
        vol = Volume(array, affine, modality="image", name=name, meta={"format": "nifti"})
    elif kind in ("itk", "picture"):
        array, affine, is_2d = read_itk_array(path, max_voxels, raw=False)
        names = ["R", "G", "B"] if kind == "picture" and array.shape[0] == 3 else []
        vol = Volume(
            array,
            affine,
            modality="image",
            name=name,
            channel_names=names,
            is_2d=is_2d,
            meta={"format": kind},
        )
    elif kind == "dicom":
        vol = load_dicom_file(path, max_voxels=max_voxels)
    elif kind == "dicom-folder":
        vol = load_dicom_series(path, series, max_voxels=max_voxels)
    else:
        vol = _load_zip(path, series=series, max_voxels=max_voxels, multichannel=multichannel)
    check_finite(path, vol.array)
    logger.debug(
        "loaded %s: shape %s, spacing %s mm, %s",
        vol.name,
        vol.shape,
        tuple(round(s, 3) for s in vol.spacing),
        vol.axcodes,
    )
    return vol


def _load_zip(path: Path, *, series: int | str | None, max_voxels: int, multichannel: bool) -> Volume:

    with tempfile.TemporaryDirectory(prefix="salt-seg-zip-") as tmp:
        files = safe_extract_zip(path, tmp)
        others = [
            f for f in files if f.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES + PICTURE_SUFFIXES)
        ]
        try:
            if len(others) == 1 and len(files) <= 2:  # one image (+ maybe a .raw next to an .mhd)
                vol = load_volume(others[0], max_voxels=max_voxels, multichannel=multichannel)
            else:
                vol = load_volume(Path(tmp), series=series, max_voxels=max_voxels)
        except DataError as exc:  # name the zip, not the temporary folder
            raise DataError(path, exc.problem) from None
    vol.meta["archive"] = "zip"
    return vol


def load_channels(paths: Sequence[str | Path], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Stack single-channel files (nnU-Net ``_0000``, ``_0001``...) into one multi-channel volume.

    Raises:
        DataError: a file fails to load, or the channels' shapes or geometries differ.
    """
    if not paths:
        raise ValueError("load_channels needs at least one file")
    vols = [load_volume(p, max_voxels=max_voxels) for p in paths]
    first = vols[0]
    for p, v in zip(paths[1:], vols[1:], strict=False):
        if not same_geometry(first, v):
            raise DataError(p, f"channel geometry {v.shape} does not match the first channel {first.shape}")
    if len(vols) == 1:
        return first
    array = np.concatenate([v.array for v in vols], axis=0)
    names = [n for v in vols for n in v.channel_names]
    return Volume(
        array,
        first.affine,
        modality=first.modality,
        name=first.name,
        channel_names=names,
        is_2d=first.is_2d,
        meta=dict(first.meta),
    )


__all__ = [
    "DEFAULT_MAX_VOXELS",
    "IMAGE_SUFFIXES",
    "file_kind",
    "load_channels",
    "load_volume",
    "strip_suffix",
]
