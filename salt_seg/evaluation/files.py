"""File side of evaluation: find and pair NIfTI label maps, read them with geometry checks, read a split's test
cases and a ``dataset.json``'s class names, and write results atomically. No metric is computed here.

* A **case name** is the file name without ``.nii.gz`` / ``.nii``; a prediction and a ground truth pair up when
  their case names are equal.
* Label maps are read with :func:`salt_seg.data.load_label` (integer, non-negative values checked) and
  reoriented (axis permutes/flips, never resampling) to the closest RAS+ canonical voxel order, so slice axis 2
  is axial for a standard scan and slice indices mean what they mean in a ``salt_seg`` split.
  Spacing (mm) comes from the affine's column norms after reorientation.
* A prediction must have the ground truth's shape and affine (within :data:`AFFINE_ATOL_MM` mm /
  :data:`AFFINE_RTOL`); otherwise a ``ValueError`` names the prediction file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from salt_seg.data import load_label, load_split
from salt_seg.io import atomic_write_json, atomic_write_text

#: NIfTI file suffixes, longest first.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: affines of a prediction and its ground truth may differ by this much (mm) and still match (as in salt_seg.data).
AFFINE_ATOL_MM = 1e-3
#: relative tolerance on the same comparison (float32 header rounding on large coordinates).
AFFINE_RTOL = 1e-4


def case_name(path: str | Path) -> str | None:
    """The case name of a NIfTI path (``liver_003.nii.gz`` -> ``liver_003``), ``None`` if not NIfTI."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def list_cases(folder: str | Path, what: str = "folder") -> dict[str, Path]:
    """``{case name: path}`` of the NIfTI files directly inside ``folder``, sorted by name.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: no NIfTI file, or two files with the same case name (``a.nii`` and ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} is not a directory")
    cases: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        name = case_name(p)
        if name is None or not p.is_file():
            continue
        if name in cases:
            raise ValueError(f"{p}: case name {name!r} also used by {cases[name].name}")
        cases[name] = p
    if not cases:
        raise ValueError(f"{folder}: no .nii/.nii.gz files in this {what}")
    return cases


def read_split_test_part(path: str | Path) -> tuple[dict[str, list[int] | None], int]:
    """The test part of a ``salt_seg`` split file (:func:`salt_seg.data.load_split`).

    Returns:
        ``({case id: slice indices, or None for the whole case}, axis)``: slice indices refer to ``axis`` of the
        RAS-canonical volume (slice-level splits of a few volumes); whole cases come from volume-level splits.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a split file, or an empty test part.
    """

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: split file not found")
    split = load_split(p)
    test = split.slices("test")
    if not test:
        raise ValueError(f"{p}: the split's test part is empty")
    return test, split.axis


def read_label_names(path: str | Path) -> dict[int, str]:
    """``{label value: name}`` from a ``dataset.json`` (nnU-Net v2 ``{"liver": 1}`` or MSD ``{"1": "liver"}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON or no ``"labels"`` object.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: dataset.json not found")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise ValueError(f'{p}: no "labels" object')
    out: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, str) and str(k).lstrip("-").isdigit():  # MSD: {"1": "liver"}
            out[int(k)] = v
        elif isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: {"liver": 1}
            out[v] = str(k)
        # nnU-Net region labels (lists) are not single label values: skipped
    return out


def find_dataset_json(gt_dir: str | Path) -> Path | None:
    """``dataset.json`` in the ground-truth folder or its parent (nnU-Net layout: ``labelsTr/..``), if any."""
    for folder in (Path(gt_dir), Path(gt_dir).parent):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    return None


def parse_class_spec(spec: str, label_names: Mapping[int, str] | None = None) -> list[int]:
    """Class ids from ``"1,2"``, ``"liver,spleen"`` (names from a dataset.json, case-insensitive) or a mix.

    Raises:
        ValueError: an empty list, or a name that is not in ``label_names`` (valid names listed).
    """
    by_name = {v.lower(): k for k, v in (label_names or {}).items()}
    ids: list[int] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token.lstrip("-").isdigit():
            ids.append(int(token))
        elif token.lower() in by_name:
            ids.append(by_name[token.lower()])
        elif not by_name:
            raise ValueError(
                f"--classes: {token!r} is a name but no dataset.json was found (pass --dataset-json)"
            )
        else:
            raise ValueError(f"--classes: unknown class {token!r}; dataset.json has {', '.join(by_name)}")
    if not ids:
        raise ValueError(f"--classes: no class in {spec!r}")
    return list(dict.fromkeys(ids))


def read_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Read a label map with :func:`salt_seg.data.load_label` and reorient it to RAS+ (no resampling).

    Returns:
        ``(array, affine, file_shape)``: the ``I x J x K`` integer array and 4x4 affine of the RAS-canonical
        grid, and the shape as stored in the file (for messages). A 2-D map is ``I x J x 1``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, non-integer or negative values (``salt_seg.data.DataError``, naming the file).
    """

    vol = load_label(path)
    ras = vol.to_ras()
    return ras.array[0], ras.affine, vol.shape


def load_pair(
    pred_path: str | Path | None, gt_path: str | Path
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a prediction and its ground truth, check they share a grid, return RAS-canonical arrays + spacing.

    A prediction stored with flipped/permuted axes on the ground truth's physical grid (e.g. LAS next to RAS)
    matches; any other difference in shape or affine is an error.

    Args:
        pred_path: the prediction, or ``None`` to score an empty prediction (a missing file).
        gt_path: the ground truth.

    Returns:
        ``(pred, gt, spacing_mm)``: ``I x J x K`` integer arrays in RAS+ voxel order and mm per axis.

    Raises:
        ValueError: shape or affine mismatch (naming the prediction file), or an unreadable file.
    """
    gt, gt_affine, gt_shape = read_label_map(gt_path)
    spacing = tuple(float(v) for v in np.linalg.norm(gt_affine[:3, :3], axis=0))
    if pred_path is None:
        return np.zeros_like(gt), gt, spacing  # type: ignore[return-value]
    pred, pred_affine, pred_shape = read_label_map(pred_path)
    if pred.shape != gt.shape:
        raise ValueError(f"{pred_path}: shape {pred_shape} differs from ground truth {gt_path} {gt_shape}")
    if not np.allclose(pred_affine, gt_affine, atol=AFFINE_ATOL_MM, rtol=AFFINE_RTOL):
        diff = float(np.abs(pred_affine - gt_affine).max())
        raise ValueError(
            f"{pred_path}: affine differs from ground truth {gt_path} (max difference {diff:.4g}); "
            "predictions must be on the ground truth's voxel grid"
        )
    return pred, gt, spacing  # type: ignore[return-value]


def jsonable(obj: object) -> object:
    """``obj`` with NaN/inf floats replaced by ``None`` and numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | Path, obj: object) -> Path:
    """Write strict JSON (NaN as ``null``) atomically."""
    return atomic_write_json(path, jsonable(obj), allow_nan=False)


def _cell(v: object) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""  # empty cell = excluded / undefined
    return v


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a CSV atomically; NaN and ``None`` become empty cells."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([_cell(v) for v in row])
    return atomic_write_text(path, buf.getvalue())
