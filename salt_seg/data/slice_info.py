"""What a slice-level split knows about each case: slice count, spacing, labelled slices and the classes of every
slice along an axis (:class:`SliceInfo`), read from the labels once for every axis; and which classes a split's
parts hold, so that a split whose val or test slices hold a class no training slice holds can say so
(:func:`salt_seg.data.split.make_split`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from salt_seg.data.split import Split


@dataclass(frozen=True)
class SliceInfo:
    """What a slice-level split needs to know about one case.

    Attributes:
        n_slices: slices along the split axis.
        spacing_mm: distance between neighbouring slices in mm.
        foreground: indices of slices holding any labelled structure.
        classes: per slice, the label values (non-zero) it holds; ``None`` when unknown (then the split cannot
            check that its training slices hold every class).
    """

    n_slices: int
    spacing_mm: float
    foreground: tuple[int, ...]
    classes: tuple[tuple[int, ...], ...] | None = None


def _slice_classes(data: np.ndarray, axis: int) -> tuple[tuple[int, ...], ...]:
    """Per slice along ``axis``, the non-zero label values it holds."""
    codes = np.asarray(data)
    if codes.size == 0:
        return tuple(() for _ in range(codes.shape[axis]))
    values = None
    if codes.dtype.kind not in "iub" or codes.min() < 0 or codes.max() > 65535:
        values, codes = np.unique(codes, return_inverse=True)  # compact codes for bincount
        codes = codes.reshape(data.shape)
    rows = np.moveaxis(codes.astype(np.int64, copy=False), axis, 0).reshape(codes.shape[axis], -1)
    k = int(rows.max()) + 1
    out = []
    for row in rows:
        present = np.flatnonzero(np.bincount(row, minlength=k))
        labels = present if values is None else values[present]
        out.append(tuple(int(v) for v in labels if v != 0))
    return tuple(out)


def read_slice_infos(
    dataset: Any, axes: Sequence[int] = (0, 1, 2), case_ids: Sequence[str] | None = None
) -> dict[int, dict[str, SliceInfo]]:
    """Read each labelled case's label (RAS) once and note, along each of ``axes``, its slice count, spacing,
    labelled slices and the classes of every slice: ``axis -> case id -> SliceInfo``."""
    out: dict[int, dict[str, SliceInfo]] = {a: {} for a in axes}
    for case in dataset.labelled:
        if case_ids is not None and case.case_id not in case_ids:
            continue
        image = dataset.load_image(case)
        label = dataset.load_label(case, image).to_ras()
        data = label.data
        for axis in axes:
            classes = _slice_classes(data, axis)
            fg = tuple(i for i, c in enumerate(classes) if c)
            out[axis][case.case_id] = SliceInfo(data.shape[axis], float(label.spacing[axis]), fg, classes)
    return out


def slice_info_from_dataset(
    dataset: Any, axis: int = 2, case_ids: Sequence[str] | None = None
) -> dict[str, SliceInfo]:
    """Read each labelled case's label (RAS) and note its slice count, spacing and labelled slices."""
    return read_slice_infos(dataset, (axis,), case_ids)[axis]


def part_classes(split: Split, part: str, slice_info: Mapping[str, SliceInfo]) -> set[int] | None:
    """The label values held by a part's slices (``None`` when ``slice_info`` does not know them)."""
    found: set[int] = set()
    for e in split.part(part):
        info = slice_info.get(e.case_id)
        if info is None or info.classes is None:
            return None
        for s in range(info.n_slices) if e.slices is None else e.slices:
            found.update(info.classes[s])
    return found


def classes_missing_from_train(split: Split, slice_info: Mapping[str, SliceInfo]) -> list[int]:
    """Classes that val or test slices hold but no training slice does (sorted; empty when unknown)."""
    train = part_classes(split, "train", slice_info)
    held = [part_classes(split, p, slice_info) for p in ("val", "test")]
    if train is None or any(h is None for h in held):
        return []
    return sorted(set().union(*held) - train)  # type: ignore[arg-type]
