"""Validate a dataset case by case and summarise it (what ``salt-seg data check`` prints).

Every image and label is read through the same checks training uses, so a dataset that passes here loads in
training. Problems make the dataset unusable as it stands; warnings are worth a look but do not fail it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from salt_seg.data.dataset import Dataset
from salt_seg.data.errors import DataError
from salt_seg.data.laterality import mirror_pairs
from salt_seg.data.readers import DEFAULT_MAX_VOXELS

logger = logging.getLogger(__name__)


@dataclass
class CaseReport:
    """What was found for one case.

    Attributes:
        case_id: the case.
        shape: spatial shape ``(I, J, K)`` of the image, or ``None`` when it failed to load.
        spacing: voxel size in mm along ``I, J, K``.
        axcodes: orientation codes of the voxel axes (``RAS``, ``LPS``...).
        channels: number of image channels.
        label_voxels: class id -> voxel count (background included), or ``None`` without a label.
        problems: problems for this case (each a one-line message naming the file).
        warnings: oddities that do not prevent use.
    """

    case_id: str
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    axcodes: str = ""
    channels: int = 0
    label_voxels: dict[int, int] | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """A dataset's check result.

    Attributes:
        dataset: the indexed dataset.
        cases: one report per case.
        problems: dataset-level problems (indexing) plus every case's problems.
        warnings: dataset-level and case warnings.
    """

    dataset: Dataset
    cases: list[CaseReport]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_case(dataset: Dataset, case_id: str, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> CaseReport:
    """Load one case's image and label with every check and count label voxels per class."""
    case = dataset.case(case_id)
    report = CaseReport(case_id)
    try:
        image = dataset.load_image(case, max_voxels=max_voxels)
    except (DataError, FileNotFoundError) as exc:
        report.problems.append(str(exc))
        return report
    report.shape = image.shape
    sx, sy, sz = (round(float(s), 4) for s in image.spacing)
    report.spacing = (sx, sy, sz)
    report.axcodes, report.channels = image.axcodes, image.n_channels
    expected = len(dataset.channel_names)
    if dataset.format in ("nnunet", "msd") and image.n_channels != expected:
        report.problems.append(
            f"{case.images[0]}: image has {image.n_channels} channel(s), dataset declares {expected}"
        )
    if case.label is None:
        report.warnings.append(f"case {case_id}: no label map")
        return report
    try:
        label = dataset.load_label(case, image, max_voxels=max_voxels)
    except (DataError, FileNotFoundError) as exc:
        report.problems.append(str(exc))
        return report
    values, counts = np.unique(label.array, return_counts=True)
    report.label_voxels = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
    if not any(v != 0 for v in report.label_voxels):
        report.warnings.append(f"{case.label}: label map is empty (background only)")
    return report


def check_dataset(dataset: Dataset, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> CheckReport:
    """Check every case of ``dataset`` (reads all voxels once; nothing is written)."""
    cases = []
    for c in dataset.cases:
        logger.debug("checking case %s", c.case_id)
        cases.append(check_case(dataset, c.case_id, max_voxels=max_voxels))
    problems = list(dataset.problems) + [p for r in cases for p in r.problems]
    warnings = [w for r in cases for w in r.warnings]
    seen = {v for r in cases if r.label_voxels for v, n in r.label_voxels.items() if n}
    absent = [f"{cid} ({name})" for cid, name in dataset.classes.items() if cid not in seen]
    if absent and any(r.label_voxels for r in cases):
        warnings.append(f"declared class(es) never present in any label: {', '.join(absent)}")
    spacings = {r.spacing for r in cases if r.spacing}
    if len(spacings) > 1:
        warnings.append(f"{len(spacings)} different voxel spacings across cases (resampling may help)")
    return CheckReport(dataset, cases, problems, warnings)


def format_check_report(report: CheckReport) -> str:
    """A plain-text summary: dataset line, one line per case, then problems and warnings."""
    ds = report.dataset
    classes = ", ".join(f"{k}={v}" for k, v in ds.classes.items())
    lines = [
        f"dataset {ds.name!r} ({ds.format}) at {ds.root}",
        f"  {len(ds.cases)} case(s), {len(ds.labelled)} labelled; channels: {', '.join(ds.channel_names)}; "
        f"classes: {classes}",
    ]
    pairs = mirror_pairs(ds.classes)
    if pairs:
        lines.append(
            "  left/right pairs (a training flip exchanges them, data.lateral_flip): "
            + ", ".join(f"{ds.classes[a]}<->{ds.classes[b]}" for a, b in pairs)
        )
    for r in report.cases:
        if r.shape is None:
            lines.append(f"  {r.case_id}: not loaded")
            continue
        sp = "x".join(f"{s:g}" for s in (r.spacing or ()))
        counts = (
            "no label"
            if r.label_voxels is None
            else " ".join(f"{k}:{v}" for k, v in sorted(r.label_voxels.items()) if k != 0) or "empty label"
        )
        shape = "x".join(str(s) for s in r.shape)
        lines.append(
            f"  {r.case_id}: {shape} vox, {sp} mm, {r.axcodes}, {r.channels} ch, label voxels {counts}"
        )
    lines.append(f"problems: {len(report.problems)}")
    lines += [f"  - {p}" for p in report.problems]
    if report.warnings:
        lines.append(f"warnings: {len(report.warnings)}")
        lines += [f"  - {w}" for w in report.warnings]
    return "\n".join(lines)
