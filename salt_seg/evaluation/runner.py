"""Evaluate many cases: from arrays (:func:`evaluate_cases`, what a run's test split goes through) or from two
NIfTI folders (:func:`evaluate_folders`), and write the result files (:func:`write_results`).

Output files (all written atomically; NaN = excluded/undefined is an empty CSV cell and ``null`` in JSON):

* ``evaluation.json`` - how it was made (``provenance``: the folders, or the run with its split part, prompt mode
  and overlap mode), settings, conventions, class names, case lists, summary, per-case summaries, every score.
* ``summary.csv`` - per level and class (and ``all``): mean/std/n of Dice, HD95 (mm), NSD, HD95 over
  both-present scores only, and the status counts.
* ``per_case.csv`` - the same per case (for the slice level: each case's slice mean).
* ``per_volume.csv`` / ``per_slice.csv`` - one row per score.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from salt_seg.evaluation import files
from salt_seg.evaluation.metrics import (
    BOTH_EMPTY_POLICIES,
    DEFAULT_NSD_TOLERANCE_MM,
    LEVELS,
    STATUSES,
    Score,
    check_policy,
    check_tolerance,
    evaluate_case,
)
from salt_seg.evaluation.summary import METRICS, SUMMARY_STATS, aggregate, aggregate_by_case
from salt_seg.io import atomic_folder

logger = logging.getLogger(__name__)

#: how a case without a prediction file is handled: an error, or scored as an empty prediction.
MISSING_POLICIES = ("error", "empty")

CONVENTIONS = {
    "dice": "2|P&G|/(|P|+|G|) in voxels",
    "hd95_mm": "max of the two directed 95th percentiles of surface distances, mm (MONAI definition)",
    "nsd": "fraction of both surfaces within the tolerance of the other (MONAI, no sub-voxel areas)",
    "both_empty": "'exclude': NaN, left out of means and counted; 'perfect': Dice 1, NSD 1, HD95 0",
    "pred_empty": "ground truth present, prediction empty: Dice 0, NSD 0, HD95 = field-of-view diagonal (mm)",
    "gt_empty": "ground truth empty, prediction present: Dice 0, NSD 0, HD95 = field-of-view diagonal (mm)",
    "std": "sample standard deviation (ddof=1)",
    "slice_mean": "pooled over all slices of all cases",
}


@dataclass(frozen=True)
class EvaluationSettings:
    """How scores are computed.

    Attributes:
        nsd_tolerance_mm: NSD tolerance in mm.
        levels: ``"volume"`` and/or ``"slice"``.
        slice_axis: voxel axis of the (RAS-canonical) volume the slices are taken along; ``None``: the split's
            axis when a split is given, else 2 (axial).
        both_empty: ``"exclude"`` or ``"perfect"`` (see :mod:`salt_seg.evaluation.metrics`).
    """

    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    levels: tuple[str, ...] = LEVELS
    slice_axis: int | None = None
    both_empty: str = "exclude"

    def __post_init__(self) -> None:
        check_tolerance(self.nsd_tolerance_mm)
        check_policy(self.both_empty)
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(f"levels must be a non-empty subset of {', '.join(LEVELS)}; got {self.levels}")
        if self.slice_axis not in (None, 0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")

    @property
    def axis(self) -> int:
        return 2 if self.slice_axis is None else self.slice_axis


@dataclass
class EvaluationResult:
    """Scores and summaries of one evaluation (``split_slices``: the split's test part, case -> slices).

    ``provenance`` says how the scores were made: ``{"source": "files", "pred", "gt", "split"}`` or
    ``{"source": "model", "model", "split", "data", "part", "prompt", "prompt_default", "overlap"}``.
    """

    scores: list[Score]
    class_ids: list[int]
    settings: EvaluationSettings
    cases: list[str]
    class_names: dict[int, str] = field(default_factory=dict)
    missing_predictions: list[str] = field(default_factory=list)
    split_slices: dict[str, list[int] | None] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    per_case: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = aggregate(self.scores)
        if not self.per_case:
            self.per_case = aggregate_by_case(self.scores)


def _labels_present(*arrays: np.ndarray) -> set[int]:
    found: set[int] = set()
    for a in arrays:
        if a.size and a.min() >= 0 and a.max() < 1 << 16:
            found |= {int(v) for v in np.flatnonzero(np.bincount(a.ravel()))}  # much faster than np.unique
        else:
            found |= {int(v) for v in np.unique(a)}
    return found - {0}


def evaluate_cases(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
    class_ids: Sequence[int] | None = None,
    settings: EvaluationSettings | None = None,
    slices: Mapping[str, Sequence[int] | None] | None = None,
) -> tuple[list[Score], list[int]]:
    """Score ``(case, pred, gt, spacing_mm)`` items, one at a time (arrays are not kept).

    Args:
        cases: ``I x J x K`` integer label maps on the same grid, with mm per axis; an iterator is fine.
        class_ids: label values to score; ``None`` scores every non-zero label found in any ground truth or
            prediction (a class absent from a case gets that case's both-empty scores).
        settings: scoring options (defaults: NSD at 2 mm, both levels, slice axis 2, both-empty excluded).
        slices: ``{case: slice indices}`` restricts a case to those slices (a slice-level split's test slices):
            such a case gets slice scores only, because its volume also holds the slices a model trained on.
            Cases not listed, or listed with ``None``, are scored whole.

    Returns:
        ``(scores, class_ids)``: scores ordered by level, case, class, slice; the class ids scored.
    """
    settings = settings or EvaluationSettings()
    restrict = dict(slices or {})
    known: list[int] = [] if class_ids is None else [int(c) for c in class_ids]
    scores: list[Score] = []
    done: dict[str, tuple[tuple[str, ...], list[int], list[int]]] = {}  # case -> (levels, slices, classes)
    for case, pred, gt, spacing in cases:
        if case in done:
            raise ValueError(f"case {case!r} given twice")
        if class_ids is None:
            known += sorted(_labels_present(gt, pred) - set(known))
        only = restrict.get(case)
        levels = settings.levels if only is None else ("slice",)
        if only is not None and "slice" not in settings.levels:
            raise ValueError(f"case {case!r} is restricted to test slices, which only the slice level scores")
        scores += evaluate_case(
            pred,
            gt,
            spacing,
            known,
            case=case,
            nsd_tolerance_mm=settings.nsd_tolerance_mm,
            levels=levels,
            slice_axis=settings.axis,
            slice_indices=only,
            both_empty=settings.both_empty,
        )
        n = int(np.shape(gt)[settings.axis])
        done[case] = (tuple(levels), list(range(n)) if only is None else [int(i) for i in only], list(known))
        logger.info("evaluated case %d: %s", len(done), case)
    # classes first seen after a case was scored are absent from it: add its both-empty scores
    for case, (levels, indices, scored) in done.items():
        for c in (c for c in known if c not in scored):
            scores += _absent_class_scores(case, c, levels, indices, settings.both_empty)
    rank = {c: i for i, c in enumerate(done)}
    scores.sort(key=lambda s: (LEVELS.index(s.level), rank[s.case], s.class_id, s.slice_index or 0))
    return scores, sorted(known) if class_ids is None else known


def _absent_class_scores(
    case: str, class_id: int, levels: Sequence[str], slice_indices: Sequence[int], both_empty: str
) -> list[Score]:
    perfect = both_empty == "perfect"
    value, hd = (1.0, 0.0) if perfect else (float("nan"), float("nan"))
    out = []
    if "volume" in levels:
        out.append(Score(case, class_id, "volume", None, "both_empty", value, hd, value, 0, 0))
    if "slice" in levels:
        out += [
            Score(case, class_id, "slice", i, "both_empty", value, hd, value, 0, 0) for i in slice_indices
        ]
    return out


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    split_file: str | Path | None = None,
    classes: str | Sequence[int] | None = None,
    dataset_json: str | Path | None = None,
    missing: str = "error",
    settings: EvaluationSettings | None = None,
) -> EvaluationResult:
    """Score a folder of predicted NIfTI label maps against a folder of ground truth, matched by case name.

    Args:
        pred_dir: predictions ``<case>.nii.gz``.
        gt_dir: ground truth ``<case>.nii.gz``; every case here (or in the split's test part) is scored.
        split_file: a ``salt_seg`` split: score only its test part - whole cases, or for a slice-level split
            only the listed slices (slice level only; see :func:`evaluate_cases`), along the split's axis.
        classes: ``"1,2"`` / ``"liver,spleen"`` / a list of ids; ``None``: every non-zero label found.
        dataset_json: class names; default ``dataset.json`` in ``gt_dir`` or its parent when present.
        missing: ``"error"`` (default) or ``"empty"``: score a missing prediction as an empty one.
        settings: scoring options.

    Raises:
        FileNotFoundError: a folder, the split, the dataset.json, or (``missing="error"``) a prediction is missing.
        ValueError: shape/affine mismatch, unreadable file, unknown class, split cases not in ``gt_dir``.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}; got {missing!r}")
    settings = settings or EvaluationSettings()
    gt_cases = files.list_cases(gt_dir, "ground-truth folder")
    pred_cases = files.list_cases(pred_dir, "prediction folder")
    selected = list(gt_cases)
    restrict: dict[str, list[int] | None] = {}
    if split_file is not None:
        restrict, axis = files.read_split_test_part(split_file)
        absent = [c for c in restrict if c not in gt_cases]
        if absent:
            raise ValueError(
                f"{split_file}: test case(s) {', '.join(absent[:5])} have no ground truth in {gt_dir}"
            )
        has_slices = any(v is not None for v in restrict.values())
        if settings.slice_axis is None:
            settings = replace(settings, slice_axis=axis)
        elif has_slices and settings.slice_axis != axis:
            raise ValueError(
                f"{split_file}: the split's test slices lie along axis {axis}, not the slice axis "
                f"{settings.slice_axis} asked for"
            )
        selected = list(restrict)
        if has_slices and "slice" not in settings.levels:
            raise ValueError(
                f"{split_file}: a slice-level split's test part is slices of volumes also used for training; "
                "score it per slice (drop --per-volume)"
            )
    missing_preds = [c for c in selected if c not in pred_cases]
    if missing_preds and missing == "error":
        raise FileNotFoundError(
            f"{Path(pred_dir) / (missing_preds[0] + '.nii.gz')}: no prediction for case {missing_preds[0]!r}"
            + (f" and {len(missing_preds) - 1} more" if len(missing_preds) > 1 else "")
            + " (use --missing empty to score missing predictions as empty)"
        )
    extra = sorted(set(pred_cases) - set(gt_cases))
    if extra:
        logger.warning("%d prediction(s) without ground truth ignored: %s", len(extra), ", ".join(extra[:5]))
    json_path = Path(dataset_json) if dataset_json is not None else files.find_dataset_json(gt_dir)
    names = files.read_label_names(json_path) if json_path is not None else {}
    class_ids = files.parse_class_spec(classes, names) if isinstance(classes, str) else classes
    gt_labels: set[int] = set(names) - {0}
    pred_labels: dict[str, set[int]] = {}

    def pairs():
        for i, case in enumerate(selected, start=1):
            pred, gt, spacing = files.load_pair(pred_cases.get(case), gt_cases[case])
            logger.debug("case %d/%d %s: shape %s spacing %s mm", i, len(selected), case, gt.shape, spacing)
            if class_ids is None:
                gt_labels.update(_labels_present(gt))
                pred_labels[case] = _labels_present(pred)
            yield case, pred, gt, spacing

    scores, ids = evaluate_cases(pairs(), class_ids, settings, restrict)
    for case, found in pred_labels.items():  # a label no ground truth knows is not a class to score
        foreign = sorted(found - gt_labels)
        if foreign:
            where = f"{json_path} and the ground truth" if names else "any ground-truth file"
            known = ", ".join(map(str, sorted(gt_labels))) or "none"
            raise ValueError(
                f"{pred_cases[case]}: label {', '.join(map(str, foreign))} is in no ground truth's label set "
                f"(labels in {where}: {known}); fix the prediction or pass --classes to score only some labels"
            )
    return EvaluationResult(
        scores=scores,
        class_ids=ids,
        settings=settings,
        cases=selected,
        class_names={c: names[c] for c in ids if c in names},
        missing_predictions=missing_preds,
        split_slices=restrict,
        provenance={
            "source": "files",
            "pred": str(pred_dir),
            "gt": str(gt_dir),
            "split": None if split_file is None else str(split_file),
        },
    )


def _summary_rows(case: str | None, summary: Mapping, names: Mapping[int, str]) -> list[list[object]]:
    rows = []
    for level in LEVELS:
        for key, s in summary.get(level, {}).items():
            name = "" if key == "all" else names.get(int(key), "")
            stats = [s[m][k] for m in SUMMARY_STATS for k in ("mean", "std")]
            prefix = [] if case is None else [case]
            rows.append(
                [*prefix, level, key, name, s["dice"]["n"], *stats, *(s["counts"][st] for st in STATUSES)]
            )
    return rows


def write_results(result: EvaluationResult, out_dir: str | Path, extra: Mapping | None = None) -> list[Path]:
    """Write ``evaluation.json`` and the CSV tables (module docstring) into ``out_dir``; return the paths.

    All files are written into a temporary folder next to ``out_dir`` first and moved in only when every one
    was written, so a full disk leaves the previous results (or nothing), never half a set.
    """
    out = Path(out_dir)
    with atomic_folder(out, merge=True) as staging:
        staged = _write_results(result, staging, extra)
    return [out / p.name for p in staged]


def _write_results(result: EvaluationResult, out: Path, extra: Mapping | None) -> list[Path]:
    names = result.class_names
    stat_cols = [f"{m}_{k}" for m in SUMMARY_STATS for k in ("mean", "std")]
    head = ["level", "class_id", "class_name", "n", *stat_cols, *STATUSES]
    written = [
        files.write_csv_atomic(out / "summary.csv", head, _summary_rows(None, result.summary, names)),
        files.write_csv_atomic(
            out / "per_case.csv",
            ["case", *head],
            [r for case, s in result.per_case.items() for r in _summary_rows(case, s, names)],
        ),
    ]
    score_cols = [
        "case",
        "class_id",
        "class_name",
        "slice_index",
        "status",
        *METRICS,
        "pred_voxels",
        "gt_voxels",
    ]
    for level in result.settings.levels:
        rows = [
            [s.case, s.class_id, names.get(s.class_id, ""), s.slice_index, s.status, s.dice, s.hd95_mm, s.nsd]
            + [s.pred_voxels, s.gt_voxels]
            for s in result.scores
            if s.level == level
        ]
        cols = score_cols if level == "slice" else [c for c in score_cols if c != "slice_index"]
        if level == "volume":
            rows = [r[:3] + r[4:] for r in rows]
        written.append(files.write_csv_atomic(out / f"per_{level}.csv", cols, rows))
    doc = {
        "provenance": result.provenance,
        "settings": {**asdict(result.settings), "both_empty_choices": list(BOTH_EMPTY_POLICIES)},
        "conventions": CONVENTIONS,
        "class_ids": result.class_ids,
        "class_names": {str(k): v for k, v in names.items()},
        "cases": result.cases,
        "missing_predictions": result.missing_predictions,
        "split_test_part": result.split_slices,  # case -> test slice indices (null: whole case)
        **(dict(extra) if extra else {}),
        "summary": result.summary,
        "per_case": result.per_case,
        "scores": [asdict(s) for s in result.scores],
    }
    written.insert(0, files.write_json_atomic(out / "evaluation.json", doc))
    return written
