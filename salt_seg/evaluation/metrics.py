"""Segmentation metrics: Dice, HD95 in millimetres and normalised surface Dice, with explicit empty-mask rules.

One comparison is a binary prediction ``P`` against a binary ground truth ``G`` on the same voxel grid with
spacing ``s`` (mm per voxel, one value per axis, anisotropic spacing honoured):

* **Dice** ``= 2|P ∩ G| / (|P| + |G|)``, counted in voxels (same value as MONAI's ``DiceMetric``; tested).
* **Surface** of a mask: its voxels with at least one face-connected background neighbour, or on the array
  border (MONAI ``get_mask_edges``, i.e. ``mask XOR binary_erosion(mask)``). Distances are Euclidean between
  voxel centres in **mm** (MONAI ``get_surface_distance`` with ``spacing``).
* **HD95** ``= max(p95 d(∂P → ∂G), p95 d(∂G → ∂P))`` in mm, percentiles linearly interpolated: exactly MONAI's
  ``compute_hausdorff_distance(percentile=95)`` (tested), computed once per pair together with NSD.
* **NSD** at tolerance ``τ`` mm ``= (#{x ∈ ∂P : d(x, ∂G) ≤ τ} + #{y ∈ ∂G : d(y, ∂P) ≤ τ}) / (|∂P| + |∂G|)``:
  exactly MONAI's ``compute_surface_dice(use_subvoxels=False)`` (tested).

Empty masks. MONAI returns NaN (with a warning) whenever a mask is empty; salt_seg decides instead:

============================  ============  ====  ====  ==========================================
situation                     ``status``    Dice  NSD   HD95 (mm)
============================  ============  ====  ====  ==========================================
both non-empty                both_present  formula     formula
both empty (true negative)    both_empty    NaN   NaN   NaN -> excluded from means and counted;
                                                        ``both_empty="perfect"`` gives 1, 1, 0 instead
``G`` present, ``P`` empty    pred_empty    0     0     penalty = field-of-view diagonal in mm
``G`` empty, ``P`` present    gt_empty      0     0     penalty = field-of-view diagonal in mm
============================  ============  ====  ====  ==========================================

Why: scoring absent structures as perfect (1, 1, 0) lets empty slices or absent classes inflate every mean (most
2-D slices of a small organ are empty), so by default they are excluded and only counted. A miss or a false
positive is a real error: Dice and NSD are 0 and HD95 is the diagonal of the compared array
(``sqrt(sum((shape_i * spacing_i)^2))``, the volume for 3-D scores, the slice for 2-D ones), which is at least
any distance measurable inside it, so a penalty never scores better than a real surface error. Every summary
reports how many scores fell under each status, so penalised HD95 means can be judged.

Volumes and slices: :func:`evaluate_case` scores a label map per 3-D volume and per 2-D slice (along
``slice_axis``; the SALT paper reports per-slice scores); :func:`evaluate_slices` scores a stack of 2-D slices
(what a 2-D training loop validates). Axes of length 1 are dropped before 3-D surfaces are taken, so a 2-D
image stored as ``W x H x 1`` is measured as 2-D (a one-voxel-thick 3-D mask would be all surface).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.metrics.utils import get_mask_edges, get_surface_distance

#: status of one comparison (see the module docstring).
STATUSES = ("both_present", "both_empty", "pred_empty", "gt_empty")
#: how a both-empty comparison is scored: excluded (NaN, counted) or perfect (Dice 1, NSD 1, HD95 0).
BOTH_EMPTY_POLICIES = ("exclude", "perfect")
#: evaluation levels: per 3-D volume, per 2-D slice.
LEVELS = ("volume", "slice")
#: default NSD tolerance in mm.
DEFAULT_NSD_TOLERANCE_MM = 2.0
#: HD percentile.
HD_PERCENTILE = 95.0


@dataclass(frozen=True)
class MaskScore:
    """Metrics of one binary comparison.

    Attributes:
        status: one of :data:`STATUSES`.
        dice: Dice coefficient in ``[0, 1]``; NaN when excluded.
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm; NaN when excluded.
        nsd: normalised surface Dice in ``[0, 1]`` at the tolerance used; NaN when excluded.
        pred_voxels: foreground voxels (pixels for 2-D) in the prediction.
        gt_voxels: foreground voxels in the ground truth.
    """

    status: str
    dice: float
    hd95_mm: float
    nsd: float
    pred_voxels: int
    gt_voxels: int


@dataclass(frozen=True)
class Score:
    """One scored (case, class[, slice]) comparison: the row of the per-volume / per-slice tables.

    Attributes:
        case: case name (file stem).
        class_id: label value compared.
        level: ``"volume"`` (3-D) or ``"slice"`` (2-D).
        slice_index: index along the slice axis for ``level == "slice"``, else ``None``.
        status, dice, hd95_mm, nsd, pred_voxels, gt_voxels: as in :class:`MaskScore`.
    """

    case: str
    class_id: int
    level: str
    slice_index: int | None
    status: str
    dice: float
    hd95_mm: float
    nsd: float
    pred_voxels: int
    gt_voxels: int


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validate a per-axis voxel spacing in mm.

    Raises:
        ValueError: wrong length, or a value that is not finite and positive.
    """
    values = tuple(float(v) for v in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing must have {ndim} values (one per axis, mm), got {list(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be finite and positive (mm), got {list(values)}")
    return values


def check_policy(both_empty: str) -> str:
    if both_empty not in BOTH_EMPTY_POLICIES:
        raise ValueError(f"both_empty must be one of {', '.join(BOTH_EMPTY_POLICIES)}; got {both_empty!r}")
    return both_empty


def check_tolerance(nsd_tolerance_mm: float) -> float:
    tol = float(nsd_tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"nsd_tolerance_mm must be finite and >= 0 (mm), got {nsd_tolerance_mm}")
    return tol


def fov_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the field of view in mm, ``sqrt(sum((shape_i * spacing_i)^2))``: the HD95 penalty."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a one-voxel margin (clipped to the array).

    Exact, not an approximation: erosion treats the outside of the array as background, so a clipped margin
    gives the same surface as a padded one, and distances are translation invariant.
    """
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    return pred[tuple(box)], gt[tuple(box)]


def surface_distances_mm(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``pred`` to the surface of ``gt``, and back.

    Args:
        pred: binary mask, any number of axes; must be non-empty.
        gt: binary mask of the same shape; must be non-empty.
        spacing: mm per voxel along each axis.

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: float64 arrays with one entry per surface voxel of ``pred`` / ``gt``.
    """

    assert pred.any() and gt.any(), "surface distances need two non-empty masks"
    pred_c, gt_c = _crop_to_union(pred, gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's always_return_as_numpy deprecation notice
        edges_pred, edges_gt = get_mask_edges(pred_c, gt_c, crop=False)
        d_pg = get_surface_distance(edges_pred, edges_gt, distance_metric="euclidean", spacing=spacing)
        d_gp = get_surface_distance(edges_gt, edges_pred, distance_metric="euclidean", spacing=spacing)
    return np.asarray(d_pg, dtype=np.float64), np.asarray(d_gp, dtype=np.float64)


def _hd_nsd(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], tol: float) -> tuple[float, float]:
    d_pg, d_gp = surface_distances_mm(pred, gt, spacing)
    q = HD_PERCENTILE / 100.0
    hd95 = max(float(np.quantile(d_pg, q)), float(np.quantile(d_gp, q)))
    nsd = (int((d_pg <= tol).sum()) + int((d_gp <= tol).sum())) / (d_pg.size + d_gp.size)
    return hd95, float(nsd)


def _score_from_counts(pred_n: int, gt_n: int, diagonal_mm: float, both_empty: str) -> MaskScore | None:
    """Scores fixed by the counts alone (an empty mask), or ``None`` when surfaces are needed."""
    if pred_n == 0 and gt_n == 0:
        if both_empty == "perfect":
            return MaskScore("both_empty", 1.0, 0.0, 1.0, 0, 0)
        return MaskScore("both_empty", math.nan, math.nan, math.nan, 0, 0)
    if pred_n == 0 or gt_n == 0:
        status = "pred_empty" if pred_n == 0 else "gt_empty"
        return MaskScore(status, 0.0, diagonal_mm, 0.0, pred_n, gt_n)
    return None


def compare_masks(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    *,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    both_empty: str = "exclude",
) -> MaskScore:
    """Dice, HD95 (mm) and NSD of one binary prediction against one binary ground truth.

    Args:
        pred: binary mask (bool or 0/1), 2-D or 3-D.
        gt: binary mask of the same shape.
        spacing: mm per voxel along each axis of the arrays.
        nsd_tolerance_mm: NSD tolerance in mm.
        both_empty: ``"exclude"`` (NaN scores, counted) or ``"perfect"`` (1, 1, 0); see the module docstring.

    Raises:
        ValueError: shapes differ, bad spacing, tolerance or policy.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    spacing_t = check_spacing(spacing, pred.ndim)
    tol = check_tolerance(nsd_tolerance_mm)
    check_policy(both_empty)
    keep = [a for a in range(pred.ndim) if pred.shape[a] > 1] or [0]
    if len(keep) < pred.ndim:  # drop singleton axes: a W x H x 1 image is 2-D
        pred, gt = pred.reshape([pred.shape[a] for a in keep]), gt.reshape([gt.shape[a] for a in keep])
        spacing_t = tuple(spacing_t[a] for a in keep)
    pred_n, gt_n = int(pred.sum()), int(gt.sum())
    inter = int(np.logical_and(pred, gt).sum())
    fixed = _score_from_counts(pred_n, gt_n, fov_diagonal_mm(pred.shape, spacing_t), both_empty)
    if fixed is not None:
        return fixed
    hd95, nsd = _hd_nsd(pred, gt, spacing_t, tol)
    return MaskScore("both_present", 2.0 * inter / (pred_n + gt_n), hd95, nsd, pred_n, gt_n)


def _as_label_map(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{what} must be an integer label map, got non-integer values")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "biu":
        raise ValueError(f"{what} must be an integer label map, got dtype {a.dtype}")
    return a


def _score_stack(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_2d: tuple[float, ...],
    class_ids: Sequence[int],
    *,
    case: str,
    slice_indices: Sequence[int],
    tol: float,
    both_empty: str,
) -> list[Score]:
    """Per-slice scores of an ``N x H x W`` stack: counts vectorised, surfaces only where both are present."""
    diagonal = fov_diagonal_mm(pred.shape[1:], spacing_2d)
    out: list[Score] = []
    for c in class_ids:
        p, g = pred == c, gt == c
        pn, gn = p.sum(axis=(1, 2)), g.sum(axis=(1, 2))
        inter = np.logical_and(p, g).sum(axis=(1, 2))
        for i, idx in enumerate(slice_indices):
            ms = _score_from_counts(int(pn[i]), int(gn[i]), diagonal, both_empty)
            if ms is None:
                hd95, nsd = _hd_nsd(p[i], g[i], spacing_2d, tol)
                dice = 2.0 * int(inter[i]) / int(pn[i] + gn[i])
                ms = MaskScore("both_present", dice, hd95, nsd, int(pn[i]), int(gn[i]))
            out.append(Score(case, int(c), "slice", int(idx), **ms.__dict__))
    return out


def evaluate_slices(
    pred_slices: np.ndarray | Sequence[np.ndarray],
    gt_slices: np.ndarray | Sequence[np.ndarray],
    spacing_2d: Sequence[float],
    class_ids: Sequence[int],
    *,
    case: str = "case",
    slice_indices: Sequence[int] | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    both_empty: str = "exclude",
) -> list[Score]:
    """Score 2-D slices per class (``level == "slice"``), e.g. a 2-D validation set.

    Args:
        pred_slices: ``N x H x W`` integer label maps, or a sequence of ``H x W`` maps (sizes may differ).
        gt_slices: the matching ground-truth label maps.
        spacing_2d: mm per pixel along ``(H, W)``.
        class_ids: label values to score (usually without background 0).
        case: case name stored in every score.
        slice_indices: an index per slice (default ``0..N-1``).
        nsd_tolerance_mm: NSD tolerance in mm.
        both_empty: ``"exclude"`` or ``"perfect"`` (module docstring).

    Returns:
        One :class:`Score` per (class, slice), classes outer, slices inner.

    Raises:
        ValueError: slice counts or shapes differ, bad spacing, tolerance, policy, or non-integer labels.
    """
    spacing_t = check_spacing(spacing_2d, 2)
    tol = check_tolerance(nsd_tolerance_mm)
    check_policy(both_empty)
    if len(pred_slices) != len(gt_slices):
        raise ValueError(f"{len(pred_slices)} prediction slices but {len(gt_slices)} ground-truth slices")
    indices = list(range(len(gt_slices))) if slice_indices is None else [int(i) for i in slice_indices]
    if len(indices) != len(gt_slices):
        raise ValueError(f"{len(indices)} slice indices for {len(gt_slices)} slices")
    kw: dict[str, Any] = {"case": case, "tol": tol, "both_empty": both_empty}
    if isinstance(pred_slices, np.ndarray) and isinstance(gt_slices, np.ndarray):
        pred, gt = _as_label_map(pred_slices, "prediction"), _as_label_map(gt_slices, "ground truth")
        if pred.ndim != 3 or pred.shape != gt.shape:
            raise ValueError(f"expected two N x H x W stacks of equal shape, got {pred.shape} and {gt.shape}")
        return _score_stack(pred, gt, spacing_t, class_ids, slice_indices=indices, **kw)
    per_slice: list[list[Score]] = []
    for i, (p, g) in enumerate(zip(pred_slices, gt_slices, strict=True)):
        p, g = _as_label_map(p, "prediction"), _as_label_map(g, "ground truth")
        if p.ndim != 2 or p.shape != g.shape:
            raise ValueError(f"slice {indices[i]}: prediction {p.shape} and ground truth {g.shape} differ")
        per_slice.append(
            _score_stack(p[None], g[None], spacing_t, class_ids, slice_indices=[indices[i]], **kw)
        )
    # same order as the stacked path: classes outer, slices inner
    return [s for k in range(len(class_ids)) for scores in per_slice for s in scores[k : k + 1]]


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    class_ids: Sequence[int],
    *,
    case: str = "case",
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    levels: Sequence[str] = LEVELS,
    slice_axis: int = 2,
    slice_indices: Sequence[int] | None = None,
    both_empty: str = "exclude",
) -> list[Score]:
    """Score one case's label map per class, per 3-D volume and/or per 2-D slice.

    Args:
        pred: ``I x J x K`` integer label map (the prediction).
        gt: ``I x J x K`` integer label map (the ground truth), same grid.
        spacing: mm per voxel along ``(I, J, K)``.
        class_ids: label values to score (usually without background 0).
        case: case name stored in every score.
        nsd_tolerance_mm: NSD tolerance in mm.
        levels: any of ``"volume"``, ``"slice"``.
        slice_axis: voxel axis the 2-D slices are taken along (2 = axial for an RAS-canonical volume).
        slice_indices: score only these slices (e.g. a slice-level split's test slices); default all.
        both_empty: ``"exclude"`` or ``"perfect"`` (module docstring).

    Returns:
        Volume scores (one per class) first, then slice scores (classes outer, slices inner).

    Raises:
        ValueError: shapes differ, not 3-D, bad spacing, tolerance, policy, level, axis or labels.
    """
    pred, gt = _as_label_map(pred, "prediction"), _as_label_map(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if pred.ndim != 3:
        raise ValueError(f"evaluate_case expects 3-D label maps, got shape {pred.shape}")
    spacing_t = check_spacing(spacing, 3)
    tol = check_tolerance(nsd_tolerance_mm)
    check_policy(both_empty)
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"levels must be a non-empty subset of {', '.join(LEVELS)}; got {list(levels)}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    out: list[Score] = []
    if "volume" in levels:
        for c in class_ids:
            ms = compare_masks(pred == c, gt == c, spacing_t, nsd_tolerance_mm=tol, both_empty=both_empty)
            out.append(Score(case, int(c), "volume", None, **ms.__dict__))
    if "slice" in levels:
        spacing_2d = tuple(s for a, s in enumerate(spacing_t) if a != slice_axis)
        p, g = np.moveaxis(pred, slice_axis, 0), np.moveaxis(gt, slice_axis, 0)
        indices = list(range(p.shape[0])) if slice_indices is None else [int(i) for i in slice_indices]
        if any(not 0 <= i < p.shape[0] for i in indices):
            raise ValueError(
                f"slice_indices must lie in [0, {p.shape[0]}) along axis {slice_axis}, got {indices}"
            )
        if slice_indices is not None:
            p, g = p[indices], g[indices]
        out += _score_stack(
            p, g, spacing_2d, class_ids, case=case, slice_indices=indices, tol=tol, both_empty=both_empty
        )
    return out
