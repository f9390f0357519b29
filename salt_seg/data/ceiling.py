"""The resolution ceiling of one slice: the Dice a *perfect* prediction reaches when the logits live on a coarse grid.

The measurement itself (:func:`resolution_ceiling`); its summaries over slices and datasets, and the full story of
how it is computed, are in :mod:`salt_seg.evaluation.ceiling`. It sits in the data layer because training logs it
for its validation slices and must not import the evaluation layer above it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from salt_seg.data.slices import resize_label
from salt_seg.preprocessing import RESIZE_MODES, SliceTransform, logits_to_original

__all__ = ["ceiling_values", "check_ceiling_args", "resolution_ceiling"]


def check_ceiling_args(image_size: int, grids: Sequence[int], resize: str) -> None:
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
    """Per-class Dice of a perfect prediction made on a ``grid x grid`` logit grid (:mod:`salt_seg.evaluation.ceiling`).

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
    check_ceiling_args(image_size, [grid], resize)
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


def ceiling_values(
    labels: Iterable[np.ndarray],
    classes: Sequence[int],
    image_size: int,
    grids: Sequence[int],
    *,
    resize: str = "longest",
) -> dict[int, dict[int, list[float]]]:
    """:func:`resolution_ceiling` of every slice: ``grid -> class id -> one Dice per slice holding the class``.

    Raises:
        ValueError: bad arguments (see :func:`resolution_ceiling`).
    """
    grids = [int(g) for g in grids]
    check_ceiling_args(image_size, grids, resize)
    values: dict[int, dict[int, list[float]]] = {g: {int(c): [] for c in classes} for g in grids}
    for label in labels:
        for g in grids:
            for c, d in resolution_ceiling(label, classes, image_size, g, resize=resize).items():
                values[g][c].append(d)
    return values
