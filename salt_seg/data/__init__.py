"""Medical data in: readers, dataset formats, MONAI pipelines, few-shot splits, simulated prompts.

Public API (imported lazily, so ``import salt_seg.data`` costs nothing until a name is used):

Volumes and readers
    :class:`Volume` (``C x I x J x K`` array, RAS+ mm affine), :class:`Geometry`,
    :func:`load_volume` (NIfTI, DICOM folder/file/zip, NRRD/MHA, PNG/JPG/TIFF), :func:`load_label`,
    :func:`load_channels`, :func:`list_dicom_series`, :func:`extract_slice`, :func:`insert_slice`,
    :func:`slice_to_voxel`, :func:`voxel_to_slice`, :class:`DataError`, :data:`LPS_TO_RAS`. Writing NIfTI:
    :func:`salt_seg.io.save_nifti`.
Datasets
    :func:`detect_format`, :func:`load_dataset` -> :class:`Dataset` of :class:`Case`,
    :data:`DATASET_FORMATS`, :func:`check_dataset`, :func:`prepare_dataset`, :data:`RECIPES`.
Splits
    :func:`make_split`, :func:`save_split`, :func:`load_split`, :class:`Split`.
Pipelines (import MONAI and torch)
    :func:`prepare_volume` -> :class:`PreparedVolume` (predict), :class:`SliceDataset` (train/eval),
    :class:`AugmentConfig`, :func:`collate_slices`.
Prompts and synthetic data
    :func:`simulate_prompt`, :func:`simulate_prompts`, :func:`synthetic_2d`, :func:`synthetic_3d`.

Orientation contract: see :mod:`salt_seg.data.volume`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DataError": "salt_seg.data.errors",
    "Volume": "salt_seg.data.volume",
    "Geometry": "salt_seg.data.volume",
    "LPS_TO_RAS": "salt_seg.geometry",
    "extract_slice": "salt_seg.data.volume",
    "insert_slice": "salt_seg.data.volume",
    "slice_to_voxel": "salt_seg.data.volume",
    "voxel_to_slice": "salt_seg.data.volume",
    "slice_shape": "salt_seg.data.volume",
    "n_slices": "salt_seg.data.volume",
    "DEFAULT_MAX_VOXELS": "salt_seg.data.readers",
    "load_volume": "salt_seg.data.readers",
    "load_channels": "salt_seg.data.readers",
    "load_label": "salt_seg.data.labels",
    "list_dicom_series": "salt_seg.data.dicom",
    "safe_extract_zip": "salt_seg.data.archive",
    "Case": "salt_seg.data.dataset",
    "Dataset": "salt_seg.data.dataset",
    "DATASET_FORMATS": "salt_seg.data.formats",
    "detect_format": "salt_seg.data.formats",
    "load_dataset": "salt_seg.data.formats",
    "check_dataset": "salt_seg.data.check",
    "format_check_report": "salt_seg.data.check",
    "write_nnunet_dataset": "salt_seg.data.writers",
    "RECIPES": "salt_seg.data.recipes",
    "prepare_dataset": "salt_seg.data.recipes",
    "Split": "salt_seg.data.split",
    "SliceInfo": "salt_seg.data.split",
    "make_split": "salt_seg.data.split",
    "save_split": "salt_seg.data.split",
    "load_split": "salt_seg.data.split",
    "simulate_prompt": "salt_seg.data.prompts_sim",
    "simulate_prompts": "salt_seg.data.prompts_sim",
    "synthetic_2d": "salt_seg.data.synthetic",
    "synthetic_3d": "salt_seg.data.synthetic",
    "synthetic_classes": "salt_seg.data.synthetic",
    "PreparedVolume": "salt_seg.data.pipeline",
    "prepare_volume": "salt_seg.data.pipeline",
    "normalize_volume": "salt_seg.data.pipeline",
    "loading_transforms": "salt_seg.data.pipeline",
    "SliceDataset": "salt_seg.data.slices",
    "AugmentConfig": "salt_seg.data.slices",
    "collate_slices": "salt_seg.data.slices",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'salt_seg.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
