"""Metrics against hand-computed cases, the empty-mask conventions, and MONAI's own implementations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from salt_seg.evaluation.metrics import (
    Score,
    compare_masks,
    evaluate_case,
    evaluate_slices,
    fov_diagonal_mm,
)

SPACING_3D = (0.5, 2.0, 3.0)  # mm: every axis different, so the answer depends on the axis


def cube(shape=(30, 30, 30), lo=10, hi=20, shift=0, axis=0) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return np.roll(m, shift, axis=axis)


def square(shape=(30, 30), lo=10, hi=20, shift=0, axis=0) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo:hi, lo:hi] = True
    return np.roll(m, shift, axis=axis)


# --- hand-computed: two 10-voxel cubes offset by 2 voxels ---------------------------------------------------
# Each cube's surface (voxels with a face-connected background neighbour) has 10^3 - 8^3 = 488 voxels.
# Shifting by k=2 along one axis: overlap 8*10*10 -> Dice = 2*800/2000 = 0.8 whatever the axis.
# The leading face (100 voxels) lies exactly 2 voxels from the other cube's face: 2*spacing[axis] mm, and that
# is the largest distance; 100/488 > 5 % of the surface is at it, so the 95th percentile is that maximum.
@pytest.mark.parametrize("axis, hd95", [(0, 1.0), (1, 4.0), (2, 6.0)])
def test_cube_shift_dice_and_hd95_follow_the_axis_spacing(axis: int, hd95: float) -> None:
    ms = compare_masks(cube(shift=2, axis=axis), cube(), SPACING_3D)
    assert ms.status == "both_present"
    assert ms.dice == pytest.approx(0.8)
    assert ms.hd95_mm == pytest.approx(hd95)
    assert (ms.pred_voxels, ms.gt_voxels) == (1000, 1000)


# NSD at 0.75 mm, shift along axis 0 (0.5 mm voxels): distances are 0 (288 surface voxels shared with the other
# surface's side walls), 0.5 mm (the 36-voxel ring one step past the other cube) and 1.0 mm (the 100-voxel leading
# face and the 64 inner voxels of the trailing face). Within 0.75 mm: 288 + 36 = 324 of 488, both directions.
# Along axis 1 or 2 (2 or 3 mm voxels) the 36-voxel ring is 2 or 3 mm away, but 16 inner voxels of the trailing
# face sit one 0.5 mm step from a side wall of the other cube along axis 0: 288 + 16 = 304 of 488.
@pytest.mark.parametrize(
    "axis, tol, nsd",
    [(0, 0.75, 324 / 488), (0, 0.4, 288 / 488), (0, 1.0, 1.0), (1, 0.75, 304 / 488), (2, 0.75, 304 / 488)],
)
def test_cube_shift_nsd_by_counting(axis: int, tol: float, nsd: float) -> None:
    ms = compare_masks(cube(shift=2, axis=axis), cube(), SPACING_3D, nsd_tolerance_mm=tol)
    assert ms.nsd == pytest.approx(nsd)


# 2-D: 10x10 squares, prediction shifted by one pixel, spacing (0.5, 2.0) mm. Dice = 2*90/200 = 0.9.
# Along axis 1 (2 mm): per direction, of the 36 boundary pixels 18 are on the other boundary (0 mm), the leading
# column of 10 is 2 mm away and the trailing column's 8 inner pixels are 0.5, 1, 1.5, 2, 2, 1.5, 1, 0.5 mm away
# (nearer a side of the other square along the 0.5 mm axis). Sorted, the top 12 of 36 are 2 mm -> HD95 = 2 mm;
# within 1 mm: 18 + 4 = 22 per direction -> NSD = 44/72. Along axis 0 (0.5 mm) everything is within 0.5 mm.
def test_square_shift_two_d_anisotropic() -> None:
    gt = square()
    along_1 = compare_masks(square(shift=1, axis=1), gt, (0.5, 2.0), nsd_tolerance_mm=1.0)
    assert along_1.dice == pytest.approx(0.9)
    assert along_1.hd95_mm == pytest.approx(2.0)
    assert along_1.nsd == pytest.approx(44 / 72)
    along_0 = compare_masks(square(shift=1, axis=0), gt, (0.5, 2.0), nsd_tolerance_mm=1.0)
    assert along_0.dice == pytest.approx(0.9)
    assert along_0.hd95_mm == pytest.approx(0.5)
    assert along_0.nsd == pytest.approx(1.0)


def test_hd95_ignores_a_single_far_outlier() -> None:
    # One stray pixel 31 rows (15.5 mm) below the square: 1 of 37 prediction surface distances, under the 5 % tail.
    gt = square(shape=(64, 64))
    pred = gt.copy()
    pred[50, 15] = True
    ms = compare_masks(pred, gt, (0.5, 2.0), nsd_tolerance_mm=1.0)
    assert ms.dice == pytest.approx(200 / 201)
    assert ms.hd95_mm == pytest.approx(0.0)
    assert ms.nsd == pytest.approx(72 / 73)  # 36 + 36 of 37 + 36 surface pixels within 1 mm


# --- empty-mask conventions -------------------------------------------------------------------------------------
def test_both_empty_is_excluded_by_default_and_perfect_on_request() -> None:
    empty = np.zeros((10, 20, 30), dtype=bool)
    excluded = compare_masks(empty, empty, SPACING_3D)
    assert excluded.status == "both_empty"
    assert math.isnan(excluded.dice) and math.isnan(excluded.hd95_mm) and math.isnan(excluded.nsd)
    perfect = compare_masks(empty, empty, SPACING_3D, both_empty="perfect")
    assert (perfect.status, perfect.dice, perfect.hd95_mm, perfect.nsd) == ("both_empty", 1.0, 0.0, 1.0)


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_scores_zero_and_the_field_of_view_diagonal(empty_side: str) -> None:
    empty = np.zeros((10, 20, 30), dtype=bool)
    full = empty.copy()
    full[2:5, 3:9, 4:10] = True
    pred, gt = (empty, full) if empty_side == "pred" else (full, empty)
    ms = compare_masks(pred, gt, SPACING_3D, both_empty="perfect")  # the policy only concerns both-empty
    diag = math.sqrt((10 * 0.5) ** 2 + (20 * 2.0) ** 2 + (30 * 3.0) ** 2)  # sqrt(25 + 1600 + 8100)
    assert diag == pytest.approx(98.6154, abs=1e-4)
    assert ms.status == f"{empty_side}_empty"
    assert (ms.dice, ms.nsd) == (0.0, 0.0)
    assert ms.hd95_mm == pytest.approx(diag)
    assert (ms.pred_voxels + ms.gt_voxels) == 3 * 6 * 6


def test_penalty_is_larger_than_any_real_distance() -> None:
    # Opposite corners: the largest distance the grid allows is still below the penalty.
    a, b = np.zeros((10, 20, 30), dtype=bool), np.zeros((10, 20, 30), dtype=bool)
    a[0, 0, 0], b[-1, -1, -1] = True, True
    real = compare_masks(a, b, SPACING_3D).hd95_mm
    assert real == pytest.approx(math.sqrt((9 * 0.5) ** 2 + (19 * 2.0) ** 2 + (29 * 3.0) ** 2))
    assert real < fov_diagonal_mm((10, 20, 30), SPACING_3D)


def test_singleton_axis_is_measured_as_two_d() -> None:
    gt, pred = square(), square(shift=1, axis=1)
    flat = compare_masks(pred, gt, (0.5, 2.0), nsd_tolerance_mm=1.0)
    thin = compare_masks(pred[..., None], gt[..., None], (0.5, 2.0, 7.0), nsd_tolerance_mm=1.0)
    assert (thin.dice, thin.hd95_mm, thin.nsd) == pytest.approx((flat.dice, flat.hd95_mm, flat.nsd))
    missed = compare_masks(np.zeros_like(gt)[..., None], gt[..., None], (0.5, 2.0, 7.0))
    assert missed.hd95_mm == pytest.approx(math.hypot(30 * 0.5, 30 * 2.0))


# --- per volume vs per slice ------------------------------------------------------------------------------------
def slice_case() -> tuple[np.ndarray, np.ndarray]:
    """GT: a 4x4 square in slices 0-3 (axis 2). Pred: the same square in slices 0-1 and 5 (a false positive)."""
    gt = np.zeros((12, 10, 8), dtype=np.int16)
    pred = np.zeros_like(gt)
    gt[3:7, 2:6, 0:4] = 1
    pred[3:7, 2:6, 0:2] = 1
    pred[3:7, 2:6, 5] = 1
    return pred, gt


def test_per_slice_and_per_volume_differ_as_counted() -> None:
    pred, gt = slice_case()
    scores = evaluate_case(pred, gt, SPACING_3D, [1], case="c1")
    vol = [s for s in scores if s.level == "volume"]
    sl = [s for s in scores if s.level == "slice"]
    assert len(vol) == 1 and len(sl) == 8
    # volume: |G| = 64, |P| = 48, overlap 32 -> 64/112 = 4/7
    assert vol[0].dice == pytest.approx(4 / 7)
    assert [s.status for s in sl] == ["both_present"] * 2 + ["pred_empty"] * 2 + [
        "both_empty",
        "gt_empty",
    ] + ["both_empty"] * 2
    dice = [s.dice for s in sl]
    assert dice[:4] == [1.0, 1.0, 0.0, 0.0] and dice[5] == 0.0
    assert all(math.isnan(d) for d in (dice[4], dice[6], dice[7]))
    slice_diag = math.hypot(12 * 0.5, 10 * 2.0)  # slices along axis 2 keep axes 0, 1
    assert [s.hd95_mm for s in sl[:4]] == pytest.approx([0.0, 0.0, slice_diag, slice_diag])
    assert [s.slice_index for s in sl] == list(range(8))
    assert all(s.case == "c1" and s.class_id == 1 for s in scores)


def test_slice_axis_choice_changes_the_slices() -> None:
    pred, gt = slice_case()
    sl = evaluate_case(pred, gt, SPACING_3D, [1], levels=("slice",), slice_axis=0)
    assert len(sl) == 12  # axis 0 has 12 slices
    present = [s for s in sl if s.status == "both_present"]
    assert [s.slice_index for s in present] == [3, 4, 5, 6]
    # each such slice: GT is rows 2-5 x slices 0-3 (16 px), pred rows 2-5 x slices {0, 1, 5} (12 px), overlap 8
    assert [s.dice for s in present] == pytest.approx([16 / 28] * 4)


def test_evaluate_slices_matches_compare_masks_and_accepts_ragged_lists() -> None:
    gt2d, pred2d = square().astype(np.int64), square(shift=1, axis=1).astype(np.int64)
    big_gt, big_pred = np.zeros((40, 50), np.int64), np.zeros((40, 50), np.int64)
    big_gt[5:15, 5:15] = 2
    big_pred[5:15, 5:15] = 2
    ragged = evaluate_slices([pred2d, big_pred], [gt2d, big_gt], (0.5, 2.0), [1, 2], nsd_tolerance_mm=1.0)
    assert [(s.class_id, s.slice_index, s.status) for s in ragged] == [
        (1, 0, "both_present"),
        (1, 1, "both_empty"),
        (2, 0, "both_empty"),
        (2, 1, "both_present"),
    ]
    assert (ragged[0].dice, ragged[0].hd95_mm, ragged[0].nsd) == pytest.approx((0.9, 2.0, 44 / 72))
    assert (ragged[3].dice, ragged[3].hd95_mm, ragged[3].nsd) == (1.0, 0.0, 1.0)
    stacked = evaluate_slices(
        np.stack([pred2d, pred2d]), np.stack([gt2d, gt2d]), (0.5, 2.0), [1], slice_indices=[7, 9], case="x"
    )
    assert [(s.case, s.slice_index, s.level) for s in stacked] == [("x", 7, "slice"), ("x", 9, "slice")]
    assert [s.dice for s in stacked] == pytest.approx([0.9, 0.9])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spacing": (1.0, 1.0)}, "spacing must have 3 values"),
        ({"spacing": (1.0, 0.0, 1.0)}, "finite and positive"),
        ({"both_empty": "ignore"}, "both_empty must be one of exclude, perfect"),
        ({"nsd_tolerance_mm": -1.0}, "nsd_tolerance_mm must be finite and >= 0"),
        ({"levels": ("voxel",)}, "levels must be a non-empty subset"),
        ({"slice_axis": 3}, "slice_axis must be 0, 1 or 2"),
    ],
)
def test_evaluate_case_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    pred, gt = slice_case()
    args = {"spacing": SPACING_3D, **kwargs}
    spacing = args.pop("spacing")
    with pytest.raises(ValueError, match=message):
        evaluate_case(pred, gt, spacing, [1], **args)


def test_label_maps_must_be_integers_and_match() -> None:
    pred, gt = slice_case()
    with pytest.raises(ValueError, match="integer label map"):
        evaluate_case(pred + 0.5, gt, SPACING_3D, [1])
    with pytest.raises(ValueError, match=r"prediction shape \(12, 10, 7\) differs"):
        evaluate_case(pred[..., :7], gt, SPACING_3D, [1])
    whole_floats = evaluate_case(pred.astype(np.float32), gt, SPACING_3D, [1], levels=("volume",))
    assert whole_floats[0].dice == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="2 prediction slices but 1"):
        evaluate_slices([gt[..., 0], gt[..., 1]], [gt[..., 0]], (1.0, 1.0), [1])


# --- same numbers as MONAI's metric functions (the definitions we claim) -------------------------------------
def random_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random blobs and a perturbed copy: overlapping but different masks."""
    from scipy.ndimage import gaussian_filter

    field = rng.standard_normal(shape)
    gt = gaussian_filter(field, sigma=2.0) > 0.1
    pred = gaussian_filter(field + 0.8 * rng.standard_normal(shape), sigma=2.0) > 0.1
    return pred, gt


@pytest.mark.parametrize("shape, spacing", [((40, 36), (0.7, 1.9)), ((24, 20, 16), (0.5, 2.0, 3.0))])
def test_matches_monai_on_random_masks(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(7)
    for _ in range(3):
        pred, gt = random_pair(rng, shape)
        assert pred.any() and gt.any()
        ms = compare_masks(pred, gt, spacing, nsd_tolerance_mm=1.5)
        p = torch.as_tensor(pred, dtype=torch.float32)[None, None]
        g = torch.as_tensor(gt, dtype=torch.float32)[None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
            nsd = compute_surface_dice(p, g, [1.5], include_background=True, spacing=spacing)
        dice_metric = DiceMetric(include_background=True, reduction="none")
        dice_metric(p, g)
        assert ms.dice == pytest.approx(float(dice_metric.aggregate()[0, 0]), rel=1e-6)
        assert ms.hd95_mm == pytest.approx(float(hd[0, 0]), rel=1e-5)
        assert ms.nsd == pytest.approx(float(nsd[0, 0]), rel=1e-6)
        assert 0.0 < ms.dice < 1.0 and ms.hd95_mm > 0


def test_score_is_a_plain_record() -> None:
    s = Score("c", 1, "volume", None, "both_present", 0.5, 1.0, 0.25, 3, 5)
    assert (s.case, s.class_id, s.slice_index, s.dice, s.gt_voxels) == ("c", 1, None, 0.5, 5)
