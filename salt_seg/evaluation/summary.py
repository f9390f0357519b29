"""Aggregate scores into mean ± std summaries, per class, per case and over seeds; format them as a table.

Conventions:

* NaN scores (both-empty comparisons under the default ``both_empty="exclude"``) are left out of every mean and
  counted in ``counts["both_empty"]``; ``n`` is the number of values a mean was taken over.
* ``std`` is the **sample** standard deviation (``ddof=1``); it is NaN when fewer than two values exist. A mean
  over no values is NaN. (JSON output writes NaN as ``null``.)
* Per-volume summaries weigh every case equally; per-slice summaries pool all slices of all cases, every slice
  weighing equally (as 2-D papers such as SALT report). The ``"all"`` entry pools every class's scores.
* ``hd95_mm`` means include the field-of-view penalty of ``pred_empty`` / ``gt_empty`` scores (their counts are
  given next to every mean); ``hd95_mm_present`` is the same statistic over ``both_present`` scores only.

Summary layout (class keys are strings so a JSON round trip gives the same object)::

    {"volume": {"1": {"dice": {"mean": .., "std": .., "n": ..}, "hd95_mm": {..}, "nsd": {..}, "hd95_mm_present": {..},
                      "counts": {"both_present": .., "both_empty": .., "pred_empty": .., "gt_empty": ..}},
                "all": {...}},
     "slice": {...}}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real

import numpy as np

from salt_seg.evaluation.metrics import LEVELS, STATUSES, Score

#: metric fields of a :class:`Score`, in table order.
METRICS = ("dice", "hd95_mm", "nsd")
#: statistics in a summary: the metrics, plus HD95 over ``both_present`` scores only (no penalties).
SUMMARY_STATS = (*METRICS, "hd95_mm_present")


def describe(values: Iterable[float]) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of the finite values (NaN skipped); sample std (``ddof=1``), NaN if ``n < 2``."""
    v = np.asarray([float(x) for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n >= 2 else math.nan
    return {"mean": mean, "std": std, "n": n}


def _summarise(scores: Sequence[Score]) -> dict:
    out: dict = {m: describe(getattr(s, m) for s in scores) for m in METRICS}
    out["hd95_mm_present"] = describe(s.hd95_mm for s in scores if s.status == "both_present")
    out["counts"] = {st: sum(1 for s in scores if s.status == st) for st in STATUSES}
    return out


def aggregate(scores: Iterable[Score]) -> dict:
    """Summarise scores per level (``volume``/``slice``) and class, plus ``"all"`` classes pooled.

    Args:
        scores: from :func:`~salt_seg.evaluation.metrics.evaluate_case` / ``evaluate_slices``, any cases.

    Returns:
        The nested summary described in the module docstring; levels without scores are absent.
    """
    scores = list(scores)
    summary: dict = {}
    for level in LEVELS:
        at_level = [s for s in scores if s.level == level]
        if not at_level:
            continue
        class_ids = sorted({s.class_id for s in at_level})
        summary[level] = {str(c): _summarise([s for s in at_level if s.class_id == c]) for c in class_ids}
        summary[level]["all"] = _summarise(at_level)
    return summary


def aggregate_by_case(scores: Iterable[Score]) -> dict[str, dict]:
    """``{case: aggregate(that case's scores)}``, cases in first-seen order (per-case slice means, etc.)."""
    by_case: dict[str, list[Score]] = {}
    for s in scores:
        by_case.setdefault(s.case, []).append(s)
    return {case: aggregate(group) for case, group in by_case.items()}


def _is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def summarize_over_seeds(per_seed: Sequence[Mapping]) -> dict:
    """Mean ± std over seeds of per-seed results with the same structure.

    Every numeric leaf, and every ``{"mean": ..}`` statistics node (as made by :func:`aggregate`), becomes
    ``{"mean", "std", "n", "values"}`` over the seeds: the mean of the per-seed values, their sample std
    (``ddof=1``), how many were finite, and the per-seed values in order. Non-numeric leaves are dropped. Works on
    :func:`aggregate` summaries and on flat dicts such as ``{"val_dice": 0.81, "test_dice": 0.78}``.

    Raises:
        ValueError: no results, or results whose keys differ (the key is named).
    """
    if not per_seed:
        raise ValueError("summarize_over_seeds needs at least one per-seed result")
    return _over_seeds(list(per_seed), path="")


def _over_seeds(nodes: list, path: str) -> dict:
    if all(isinstance(n, Mapping) and "mean" in n and _is_number(n["mean"]) for n in nodes):
        values = [float(n["mean"]) for n in nodes]
        return {**describe(values), "values": values}
    if all(_is_number(n) for n in nodes):
        values = [float(n) for n in nodes]
        return {**describe(values), "values": values}
    if not all(isinstance(n, Mapping) for n in nodes):
        return {}
    keys = list(nodes[0])
    for i, n in enumerate(nodes[1:], start=1):
        if set(n) != set(keys):
            diff = sorted(set(keys) ^ set(n), key=str)
            raise ValueError(f"per-seed results differ: seed {i} at '{path or '/'}' differs in key(s) {diff}")
    out = {}
    for k in keys:
        sub = _over_seeds([n[k] for n in nodes], f"{path}/{k}")
        if sub:
            out[k] = sub
    return out


def _pm(stats: Mapping, digits: int) -> str:
    mean, std = stats["mean"], stats["std"]
    if mean is None or math.isnan(mean):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(
    summary: Mapping, class_names: Mapping[int, str] | None = None, nsd_tolerance_mm: float | None = None
) -> str:
    """A plain-text table of an :func:`aggregate` summary: one row per level and class.

    Columns: level, class, n (scores counted), Dice, HD95 (mm), NSD (mean ± std), then how many scores were
    both present / both empty (excluded) / missed (pred empty) / false positive (gt empty).
    """
    names = {str(k): v for k, v in (class_names or {}).items()}
    nsd_head = f"NSD@{nsd_tolerance_mm:g}mm" if nsd_tolerance_mm is not None else "NSD"
    head = [
        "level",
        "class",
        "n",
        "Dice",
        "HD95 (mm)",
        nsd_head,
        "present",
        "both empty",
        "missed",
        "false pos",
    ]
    rows = [head]
    for level in LEVELS:
        for key, s in summary.get(level, {}).items():
            label = "all" if key == "all" else (f"{key} {names[key]}" if key in names else key)
            c = s["counts"]
            rows.append(
                [
                    level,
                    label,
                    str(s["dice"]["n"]),
                    _pm(s["dice"], 3),
                    _pm(s["hd95_mm"], 2),
                    _pm(s["nsd"], 3),
                    str(c["both_present"]),
                    str(c["both_empty"]),
                    str(c["pred_empty"]),
                    str(c["gt_empty"]),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
