"""Many-case evaluation from arrays: class discovery, absent classes, ordering, settings validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salt_seg.evaluation.runner import EvaluationSettings, evaluate_cases


def case_arrays() -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    a_gt = np.zeros((8, 8, 3), np.uint8)
    a_gt[2:6, 2:6, :] = 1
    b_gt = a_gt.copy()
    b_gt[0, 0, 0] = 2  # class 2 first appears in the second case
    b_pred = a_gt.copy()
    b_pred[2:6, 2:4, :] = 0  # half of class 1 predicted, class 2 missed
    return [("a", a_gt.copy(), a_gt, (1.0, 1.0, 2.0)), ("b", b_pred, b_gt, (1.0, 1.0, 2.0))]


def test_discovered_classes_fill_earlier_cases_as_both_empty() -> None:
    scores, ids = evaluate_cases(case_arrays())
    assert ids == [1, 2]
    vol = [(s.case, s.class_id, s.status, s.dice) for s in scores if s.level == "volume"]
    assert vol[0] == ("a", 1, "both_present", 1.0)
    assert vol[1][:3] == ("a", 2, "both_empty") and math.isnan(vol[1][3])  # filled in afterwards
    assert vol[2] == ("b", 1, "both_present", pytest.approx(2 * 24 / (24 + 48)))
    assert vol[3] == ("b", 2, "pred_empty", 0.0)
    slices = [(s.case, s.class_id, s.slice_index, s.status) for s in scores if s.level == "slice"]
    assert len(slices) == 2 * 2 * 3
    assert slices[3:6] == [("a", 2, 0, "both_empty"), ("a", 2, 1, "both_empty"), ("a", 2, 2, "both_empty")]
    assert slices[9] == ("b", 2, 0, "pred_empty")  # the missed pixel is in slice 0
    assert [s[3] for s in slices[10:]] == ["both_empty", "both_empty"]


def test_fixed_classes_and_perfect_policy() -> None:
    settings = EvaluationSettings(levels=("volume",), both_empty="perfect")
    scores, ids = evaluate_cases(case_arrays(), class_ids=[2, 5], settings=settings)
    assert ids == [2, 5]
    assert [(s.case, s.class_id, s.status, s.dice, s.hd95_mm) for s in scores] == [
        ("a", 2, "both_empty", 1.0, 0.0),
        ("a", 5, "both_empty", 1.0, 0.0),
        ("b", 2, "pred_empty", 0.0, pytest.approx(math.sqrt(8**2 + 8**2 + 6**2))),
        ("b", 5, "both_empty", 1.0, 0.0),
    ]


def test_duplicate_case_and_bad_settings() -> None:
    a = case_arrays()[0]
    with pytest.raises(ValueError, match="case 'a' given twice"):
        evaluate_cases([a, a])
    with pytest.raises(ValueError, match="levels must be a non-empty subset"):
        EvaluationSettings(levels=())
    with pytest.raises(ValueError, match="nsd_tolerance_mm must be finite"):
        EvaluationSettings(nsd_tolerance_mm=float("nan"))
    with pytest.raises(ValueError, match="slice_axis must be 0, 1 or 2"):
        EvaluationSettings(slice_axis=-1)


def test_slice_restriction_scores_only_listed_slices() -> None:
    cases = case_arrays()
    scores, ids = evaluate_cases(cases, slices={"a": [2, 0], "b": None})
    assert ids == [1, 2]
    a = [(s.level, s.class_id, s.slice_index, s.status) for s in scores if s.case == "a"]
    assert a == [
        ("slice", 1, 0, "both_present"),
        ("slice", 1, 2, "both_present"),
        ("slice", 2, 0, "both_empty"),  # class 2 found later in b, filled for a's listed slices only
        ("slice", 2, 2, "both_empty"),
    ]
    assert sum(s.case == "b" and s.level == "volume" for s in scores) == 2  # b is scored whole
    with pytest.raises(ValueError, match="case 'a' is restricted to test slices"):
        evaluate_cases(cases, settings=EvaluationSettings(levels=("volume",)), slices={"a": [0]})
    with pytest.raises(ValueError, match=r"slice_indices must lie in \[0, 3\) along axis 2"):
        evaluate_cases(cases, slices={"a": [3]})
