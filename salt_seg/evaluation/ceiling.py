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
import torch
import torch.nn.functional as F

from salt_seg.data.slices import resize_label
from salt_seg.evaluation.labelled_slices import iter_labelled_slices
from salt_seg.evaluation.summary import describe
from salt_seg.preprocessing import RESIZE_MODES, SliceTransform, logits_to_original


def _check(image_size: int, grids: Sequence[int], resize: str) -> None:
    if int(image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    for g in grids:
        if not 1 <= int(g) <= int(image_size):
            raise ValueError(f"grid must be in 1..image_size ({image_size}), got {g}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {list(RESIZE_MODES)}, got {resize!r}")


def resolution_ceiling(
    label: np.ndarray, classes: Sequence[int], image_size: int, grid: int, *, resize: str = "longest"
) -> dict[int, float]:
    """Per-class Dice of a perfect prediction made on a ``grid x grid`` logit grid (module docstring).

    Args:
        label: ``H x W`` integer label map of one slice, at its own resolution.
        classes: class ids to measure (background 0 is never measured).
        image_size: side ``S`` of the square model input in pixels.
        grid: side of the logit grid in pixels, ``1 <= grid <= S`` (SAM's decoder: ``S // 4``).
        resize: ``longest`` (SAM: longest side to ``S``, pad bottom/right) or ``square`` (MedSAM).

    Returns:
        ``class id -> Dice`` in ``[0, 1]`` for every class present in the slice; absent classes are left out.

    Raises:
        ValueError: ``label`` is not a 2-D integer map, or bad ``image_size``, ``grid`` or ``resize``.
    """

    lab = np.asarray(label)
    if lab.ndim != 2 or lab.dtype.kind not in "biu":
        raise ValueError(f"label must be an H x W integer label map, got {lab.dtype} of shape {lab.shape}")
    _check(image_size, [grid], resize)
    present = [int(c) for c in classes if c != 0 and (lab == c).any()]
    if not present:
        return {}
    tf = SliceTransform.create(lab.shape, int(image_size), resize)
    model_target = resize_label(np.where(np.isin(lab, present), lab, 0), tf)  # S x S, as training sees it
    masks = torch.stack([model_target == c for c in present]).float()  # K x S x S
    if grid != image_size:
        masks = F.interpolate(masks[None], size=(int(grid), int(grid)), mode="area")[0]
    pred = (logits_to_original(masks, tf) > 0.5).numpy()  # K x H x W
    out = {}
    for k, c in enumerate(present):
        gt = lab == c
        out[c] = 2.0 * float(np.logical_and(pred[k], gt).sum()) / float(pred[k].sum() + gt.sum())
    return out


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
    grids = [int(g) for g in grids]
    _check(image_size, grids, resize)
    values: dict[int, dict[int, list[float]]] = {g: {int(c): [] for c in classes} for g in grids}
    for label in labels:
        for g in grids:
            for c, d in resolution_ceiling(label, classes, image_size, g, resize=resize).items():
                values[g][c].append(d)
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
