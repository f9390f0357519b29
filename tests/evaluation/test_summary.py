"""Aggregation: NaN exclusion with counts, per class / per case / pooled, over seeds, and the printed table."""

from __future__ import annotations

import math

import pytest

from salt_seg.evaluation.metrics import Score
from salt_seg.evaluation.summary import (
    aggregate,
    aggregate_by_case,
    describe,
    format_table,
    summarize_over_seeds,
)

NAN = float("nan")


def vol(case: str, c: int, status: str, dice: float, hd: float, nsd: float) -> Score:
    return Score(case, c, "volume", None, status, dice, hd, nsd, 1, 1)


def sl(case: str, c: int, i: int, status: str, dice: float, hd: float, nsd: float) -> Score:
    return Score(case, c, "slice", i, status, dice, hd, nsd, 1, 1)


SCORES = [
    vol("a", 1, "both_present", 0.8, 2.0, 0.9),
    vol("b", 1, "both_present", 0.6, 4.0, 0.7),
    vol("a", 2, "pred_empty", 0.0, 100.0, 0.0),
    vol("b", 2, "both_empty", NAN, NAN, NAN),
    sl("a", 1, 0, "both_present", 1.0, 0.0, 1.0),
    sl("a", 1, 1, "gt_empty", 0.0, 50.0, 0.0),
    sl("a", 1, 2, "both_empty", NAN, NAN, NAN),
    sl("b", 1, 0, "both_present", 0.5, 3.0, 0.5),
]


def test_describe_uses_sample_std_and_skips_nan() -> None:
    assert describe([1.0, 2.0, 3.0, NAN]) == {"mean": 2.0, "std": 1.0, "n": 3}
    one = describe([0.25])
    assert one["mean"] == 0.25 and one["n"] == 1 and math.isnan(one["std"])
    none = describe([NAN])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["std"])


def test_aggregate_per_level_and_class_with_counts() -> None:
    s = aggregate(SCORES)
    assert set(s) == {"volume", "slice"}
    assert list(s["volume"]) == ["1", "2", "all"]
    v1 = s["volume"]["1"]
    assert v1["dice"]["mean"] == pytest.approx(0.7) and v1["dice"]["n"] == 2
    assert v1["dice"]["std"] == pytest.approx(math.sqrt(0.02))  # (0.1^2 + 0.1^2) / (2 - 1)
    assert v1["hd95_mm"]["mean"] == pytest.approx(3.0)
    assert v1["hd95_mm_present"] == v1["hd95_mm"]  # no penalty among them
    v2 = s["volume"]["2"]  # one miss counted, the both-empty case excluded
    assert (v2["dice"]["mean"], v2["dice"]["n"], v2["hd95_mm"]["mean"]) == (0.0, 1, 100.0)
    assert v2["counts"] == {"both_present": 0, "both_empty": 1, "pred_empty": 1, "gt_empty": 0}
    assert v2["hd95_mm_present"]["n"] == 0 and math.isnan(v2["hd95_mm_present"]["mean"])
    pooled = s["volume"]["all"]
    assert pooled["dice"]["mean"] == pytest.approx((0.8 + 0.6 + 0.0) / 3) and pooled["dice"]["n"] == 3
    # slices are pooled over cases: 1.0, 0.0 (false positive), 0.5; the both-empty slice is excluded
    s1 = s["slice"]["1"]
    assert s1["dice"]["mean"] == pytest.approx(0.5) and s1["dice"]["n"] == 3
    assert s1["hd95_mm"]["mean"] == pytest.approx(53.0 / 3)
    assert (s1["hd95_mm_present"]["mean"], s1["hd95_mm_present"]["n"]) == (pytest.approx(1.5), 2)
    assert s1["counts"] == {"both_present": 2, "both_empty": 1, "pred_empty": 0, "gt_empty": 1}


def test_aggregate_by_case_keeps_first_seen_order() -> None:
    per_case = aggregate_by_case(SCORES)
    assert list(per_case) == ["a", "b"]
    assert per_case["a"]["slice"]["1"]["dice"]["mean"] == pytest.approx(0.5)  # slices 1.0 and 0.0
    assert per_case["b"]["slice"]["1"]["dice"]["mean"] == pytest.approx(0.5)
    assert math.isnan(per_case["b"]["volume"]["2"]["dice"]["mean"])  # only a both-empty score
    assert aggregate([]) == {}


def test_summarize_over_seeds_on_summaries_and_flat_dicts() -> None:
    seeds = []
    for d in (0.7, 0.8, 0.9):
        s = aggregate([vol("a", 1, "both_present", d, 2.0, 0.5), vol("b", 1, "both_present", d, 4.0, 0.5)])
        seeds.append(s)
    over = summarize_over_seeds(seeds)
    dice = over["volume"]["1"]["dice"]
    assert dice["mean"] == pytest.approx(0.8) and dice["std"] == pytest.approx(0.1) and dice["n"] == 3
    assert dice["values"] == pytest.approx([0.7, 0.8, 0.9])
    assert over["volume"]["all"]["hd95_mm"]["mean"] == pytest.approx(3.0)
    assert over["volume"]["1"]["hd95_mm"]["std"] == pytest.approx(0.0)
    assert over["volume"]["1"]["counts"]["both_present"]["mean"] == 2.0
    flat = summarize_over_seeds([{"val_dice": 0.5, "run": "x"}, {"val_dice": 0.7, "run": "y"}])
    assert flat == {"val_dice": {"mean": pytest.approx(0.6), "std": pytest.approx(math.sqrt(0.02)), "n": 2,
                                 "values": [0.5, 0.7]}}  # fmt: skip


def test_summarize_over_seeds_rejects_mismatched_results() -> None:
    with pytest.raises(ValueError, match=r"seed 1 at '/volume' differs in key\(s\) \['2'\]"):
        summarize_over_seeds([{"volume": {"1": 0.5}}, {"volume": {"1": 0.5, "2": 0.1}}])
    with pytest.raises(ValueError, match="at least one"):
        summarize_over_seeds([])


def test_format_table_rows() -> None:
    table = format_table(aggregate(SCORES), {1: "liver"}, nsd_tolerance_mm=2.0)
    lines = table.splitlines()
    assert lines[0].split() == [
        "level", "class", "n", "Dice", "HD95", "(mm)", "NSD@2mm", "present", "both", "empty", "missed", "false",
        "pos",
    ]  # fmt: skip
    row = next(line for line in lines if line.startswith("volume  1 liver"))
    assert row.split()[3:] == [
        "2",
        "0.700",
        "±",
        "0.141",
        "3.00",
        "±",
        "1.41",
        "0.800",
        "±",
        "0.141",
        "2",
        "0",
        "0",
        "0",
    ]
    row2 = next(line for line in lines if line.startswith("volume  2"))
    assert row2.split()[2:] == ["1", "0.000", "100.00", "0.000", "0", "1", "1", "0"]  # n=1: no std shown
