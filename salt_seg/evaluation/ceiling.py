"""The resolution ceiling: the Dice a *perfect* prediction can reach when the model's logits live on a coarse grid.

SAM's mask decoder predicts ``S/4 x S/4`` logits for an ``S x S`` input; they are upsampled to the slice and
thresholded. Thin or convoluted structures (cortex, vessels) cannot be drawn on that grid however good the
model is. For one slice and class the ceiling is computed as follows:

1. the ground-truth mask goes into the model input exactly as a training target does: longest side resized to
   ``image_size`` keeping aspect (or squashed, ``resize="square"``) with nearest neighbour and zero padding
   (:func:`salt_seg.data.slices.resize_label` on :class:`salt_seg.preprocessing.SliceTransform`);
2. it is averaged down to ``grid x grid`` as float (``torch.nn.functional.interpolate(mode="area")``: each grid
   cell holds the fraction of its input pixels inside the mask, the best a probability map on that grid can
   say);
3. it goes back up to the input and then to the slice's own ``H x W`` bilinearly, as the model's logits do
   (:func:`salt_seg.preprocessing.logits_to_original`), and is thresholded at 0.5 (``> 0.5``, as inference
   thresholds probabilities);
4. Dice against the slice's own mask.

The one idealisation: step 3 interpolates the probabilities, the model interpolates logits (a monotone map of
them); both put the boundary where the interpolated value crosses one half between two grid cells.

Empty classes: a class absent from a slice has no ceiling there (Dice of two empty masks is undefined, see
:mod:`salt_seg.evaluation.metrics`); it is skipped, not counted, and ``n`` in the summaries is the number of
slices holding the class. With ``grid == image_size`` the ceiling measures only the resize to the input and back
(about 1 when the slice is no larger than the input).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from salt_seg.data.ceiling import ceiling_values, resolution_ceiling
from salt_seg.evaluation.labelled_slices import iter_labelled_slices
from salt_seg.evaluation.summary import describe

__all__ = ["dataset_ceiling", "mean_ceiling", "resolution_ceiling"]


def mean_ceiling(
    labels: Iterable[np.ndarray],
    classes: Sequence[int],
    image_size: int,
    grids: Sequence[int],
    *,
    resize: str = "longest",
) -> dict[int, dict[int, dict[str, float | int]]]:
    """The resolution ceiling averaged over slices, per grid and class.

    Args:
        labels: ``H x W`` label maps (sizes may differ).
        classes: class ids to measure.
        image_size: model input side ``S``.
        grids: logit grid sides to measure (e.g. ``[S // 4, S]``).
        resize: ``longest`` or ``square``.

    Returns:
        ``grid -> class id -> {"mean", "std", "n"}`` (:func:`salt_seg.evaluation.summary.describe`): ``n`` is
        the number of slices holding the class; a class in no slice has ``n == 0`` and a NaN mean.

    Raises:
        ValueError: bad arguments (see :func:`resolution_ceiling`).
    """
    values = ceiling_values(labels, classes, image_size, grids, resize=resize)
    return {g: {c: describe(v) for c, v in per.items()} for g, per in values.items()}


def dataset_ceiling(
    dataset: Any,
    image_size: int,
    grids: Sequence[int],
    *,
    axis: int = 2,
    split: Any = None,
    part: str = "test",
    resize: str = "longest",
) -> tuple[dict[int, dict[int, dict[str, float | int]]], int]:
    """:func:`mean_ceiling` over a dataset's labelled slices, or a split part's slices.

    Slices are read by :func:`salt_seg.evaluation.labelled_slices.iter_labelled_slices` (RAS volume, native
    in-plane grid, the split's indices).

    Args:
        dataset: a :class:`~salt_seg.data.dataset.Dataset`; its ``classes`` are measured.
        image_size: model input side ``S``.
        grids: logit grid sides.
        axis: RAS slice axis.
        split: a :class:`~salt_seg.data.split.Split` to restrict the slices to ``part``, or ``None``.
        part: the split part.
        resize: ``longest`` or ``square``.

    Returns:
        The :func:`mean_ceiling` summary and the number of slices read.
    """

    classes = sorted(int(c) for c in dataset.classes)
    if not classes:
        raise ValueError(f"{dataset.root}: the dataset declares no classes to measure")
    n = 0

    def labels() -> Iterable[np.ndarray]:
        nonlocal n
        for s in iter_labelled_slices(dataset, axis=axis, split=split, part=part):
            n += 1
            yield s.label

    summary = mean_ceiling(labels(), classes, image_size, grids, resize=resize)
    return summary, n
