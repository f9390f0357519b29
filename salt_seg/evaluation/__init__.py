"""Honest segmentation metrics: Dice, HD95 (mm) and NSD per class, per case, per volume and per slice, with
every empty-mask convention defined here rather than left to NaN (see :mod:`salt_seg.evaluation.metrics`).

Library use (e.g. a training loop's validation)::

    scores = evaluate_case(pred, gt, spacing_mm, class_ids=[1, 2], case="case_01")
    summary = aggregate(scores)                 # summary["slice"]["all"]["dice"]["mean"]
    over_seeds = summarize_over_seeds([summary_seed0, summary_seed1, summary_seed2])

Imports numpy only; MONAI is imported when surface distances are first computed.
"""

from __future__ import annotations

from salt_seg.evaluation.metrics import (
    BOTH_EMPTY_POLICIES,
    DEFAULT_NSD_TOLERANCE_MM,
    LEVELS,
    STATUSES,
    MaskScore,
    Score,
    compare_masks,
    evaluate_case,
    evaluate_slices,
    fov_diagonal_mm,
    surface_distances_mm,
)
from salt_seg.evaluation.runner import (
    EvaluationResult,
    EvaluationSettings,
    evaluate_cases,
    evaluate_folders,
    write_results,
)
from salt_seg.evaluation.summary import (
    aggregate,
    aggregate_by_case,
    describe,
    format_table,
    summarize_over_seeds,
)

__all__ = [
    "BOTH_EMPTY_POLICIES",
    "DEFAULT_NSD_TOLERANCE_MM",
    "LEVELS",
    "STATUSES",
    "EvaluationResult",
    "EvaluationSettings",
    "MaskScore",
    "Score",
    "aggregate",
    "aggregate_by_case",
    "compare_masks",
    "describe",
    "evaluate_case",
    "evaluate_cases",
    "evaluate_folders",
    "evaluate_slices",
    "format_table",
    "fov_diagonal_mm",
    "summarize_over_seeds",
    "surface_distances_mm",
    "write_results",
]
