"""Prompt simulation for training: boxes, points or the class token, from a ground-truth mask.

Modes (the names :class:`salt_seg.preprocessing.Preprocessing` uses for ``prompt_mode``):

* ``box``: the mask's bounding box, each side pushed *outwards* by a random amount up to ``box_jitter`` times
  the box side (and ``max_jitter_px``), clipped to the slice. Jitter never shrinks the box, so the box always
  contains the whole mask.
* ``points``: ``n_positive`` points on the mask and ``n_negative`` points off it (near the object when
  possible: inside the jittered box, else anywhere). With ``interior=True`` positives favour pixels far from
  the border (weights = distance to the background), as a user would click.
* ``box+points``: both.
* ``auto`` (alias ``none``): no geometry, the learned class token of ``class_id``.
* ``mixed``: one of ``box``, ``points``, ``box+points`` drawn per call.

Empty slices are explicit: a geometric mode returns ``None`` when the structure is absent (no prompt is forced
onto a slice without it); ``auto`` always returns a class-token prompt, since "nothing here" is a valid answer
for prompt-free segmentation.

Coordinates follow :class:`salt_seg.prompts.Prompt`: ``(x = column, y = row)`` slice pixels; boxes are
inclusive ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.ndimage import distance_transform_edt

from salt_seg.prompts import Prompt

SIM_MODES = ("box", "points", "box+points", "auto", "none", "mixed")


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def mask_box(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight inclusive box ``(x0, y0, x1, y1)`` of the non-zero pixels of ``H x W`` ``mask2d``, or ``None``."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask2d.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def jitter_box(
    box: tuple[int, int, int, int],
    shape: tuple[int, int],
    rng: np.random.Generator,
    box_jitter: float = 0.1,
    max_jitter_px: float = 20.0,
) -> tuple[int, int, int, int]:
    """Enlarge each side of ``box`` by a random amount in ``[0, min(box_jitter * side, max_jitter_px)]`` px."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    jx, jy = min(box_jitter * w, max_jitter_px), min(box_jitter * h, max_jitter_px)
    d = rng.uniform(0.0, 1.0, size=4) * np.array([jx, jy, jx, jy])
    d = np.floor(d + 0.5).astype(int)
    rows, cols = shape
    return (max(0, x0 - d[0]), max(0, y0 - d[1]), min(cols - 1, x1 + d[2]), min(rows - 1, y1 + d[3]))


def _sample(
    candidates: np.ndarray, k: int, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """``k`` distinct flat indices from ``candidates`` (fewer if there are fewer)."""
    k = min(k, candidates.size)
    if k == 0:
        return candidates[:0]
    p = None if weights is None else weights / weights.sum()
    return rng.choice(candidates, size=k, replace=False, p=p)


def simulate_prompt(
    mask2d: np.ndarray,
    class_id: int = 1,
    mode: str = "box",
    rng: np.random.Generator | int | None = None,
    *,
    box_jitter: float = 0.1,
    max_jitter_px: float = 20.0,
    n_positive: int = 1,
    n_negative: int = 0,
    interior: bool = True,
    slice_index: int | None = None,
    axis: int | None = None,
) -> Prompt | None:
    """Simulate the prompt a user would give for one structure on one slice.

    Args:
        mask2d: ``H x W`` mask of the structure (non-zero = inside).
        class_id: the class the prompt asks for (>= 1).
        mode: one of :data:`SIM_MODES` (see the module docstring).
        rng: a ``numpy.random.Generator`` or a seed.
        box_jitter: largest outward push of each box side, as a fraction of the box's width/height.
        max_jitter_px: cap on that push in pixels.
        n_positive: positive points (``points`` modes); at least 1 there.
        n_negative: negative points (``points`` modes).
        interior: weight positive points by distance to the background instead of uniformly.
        slice_index: stored on the prompt.
        axis: stored on the prompt.

    Returns:
        A :class:`Prompt`, or ``None`` for a geometric mode on a slice where the structure is absent.

    Raises:
        ValueError: unknown mode, ``class_id < 1``, a mask that is not 2-D, or negative counts.
    """
    if mode not in SIM_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; valid: {list(SIM_MODES)}")
    mask = np.asarray(mask2d) != 0
    if mask.ndim != 2:
        raise ValueError(f"simulate_prompt expects an H x W mask, got shape {mask.shape}")
    if n_positive < 0 or n_negative < 0 or box_jitter < 0 or max_jitter_px < 0:
        raise ValueError("n_positive, n_negative, box_jitter and max_jitter_px must be >= 0")
    if int(class_id) < 1:
        raise ValueError(f"class_id must be >= 1 (0 is background), got {class_id}")
    gen = _rng(rng)
    if mode in ("auto", "none"):
        return Prompt(class_id=class_id, slice_index=slice_index, axis=axis)
    box = mask_box(mask)
    if box is None:
        return None
    if mode == "mixed":
        mode = ("box", "points", "box+points")[int(gen.integers(3))]
    jittered = jitter_box(box, mask.shape, gen, box_jitter, max_jitter_px)
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    if mode in ("points", "box+points"):
        flat_in = np.flatnonzero(mask)
        weights = None
        if interior:
            weights = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].ravel()[flat_in]
        for idx in _sample(flat_in, max(1, n_positive), gen, weights):
            y, x = divmod(int(idx), mask.shape[1])
            points.append((float(x), float(y)))
            labels.append(1)
        if n_negative:
            x0, y0, x1, y1 = jittered
            near = np.zeros_like(mask)
            near[y0 : y1 + 1, x0 : x1 + 1] = True
            candidates = np.flatnonzero(near & ~mask)
            if candidates.size < n_negative:
                candidates = np.flatnonzero(~mask)
            for idx in _sample(candidates, n_negative, gen):
                y, x = divmod(int(idx), mask.shape[1])
                points.append((float(x), float(y)))
                labels.append(0)
    return Prompt(
        points=points,
        point_labels=labels,
        box=jittered if mode in ("box", "box+points") else None,
        class_id=class_id,
        slice_index=slice_index,
        axis=axis,
    )


def simulate_prompts(
    label2d: np.ndarray,
    class_ids: Iterable[int],
    mode: str = "box",
    rng: np.random.Generator | int | None = None,
    **kwargs,
) -> dict[int, Prompt | None]:
    """One simulated prompt per class of an ``H x W`` label map (``None`` where a class is absent).

    ``kwargs`` go to :func:`simulate_prompt`.
    """
    gen = _rng(rng)
    label = np.asarray(label2d)
    return {int(c): simulate_prompt(label == int(c), int(c), mode, gen, **kwargs) for c in class_ids}
