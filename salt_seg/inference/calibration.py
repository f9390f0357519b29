"""Choosing propagation thresholds on generated validation volumes.

Procedure (run by ``bench/bench_predict.py --calibrate``; the numbers are in the README and BENCHMARKS.md):

1. Generate validation volumes: one synthetic 3-D object each (:func:`validation_volume`; ellipsoids, cuboids,
   cylinders, textured background, noise -- the appearance the built-in base was pretrained on, in 3-D), seeds
   disjoint from the acceptance test's.
2. On each, put the tight box of the object's middle slice (:func:`middle_box_prompt`) and propagate with no
   stop rule but "the mask is empty" (:data:`NO_STOP`), recording every slice's predicted IoU, stability score,
   area and overlap with the object.
3. Because a stop rule only cuts a direction at its first failing slice, every candidate setting's result is a
   prefix of these traces: :func:`simulate` scores a grid of settings exactly, without re-running the model.
4. Keep the setting with the best mean volume Dice; among settings within 0.002 of it, prefer the one that keeps
   the fewest slices beyond the objects (a leak is what a user notices first), then the stricter one (higher IoU
   threshold, then stability threshold, then area ratio), which costs nothing on validation data and guards
   better against running past the structure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salt_seg.data import Volume, extract_slice, prepare_volume, synthetic_3d
from salt_seg.inference.coords import prompt_to_prepared
from salt_seg.inference.propagation import PropagationResult, PropagationSettings, propagate, stop_reason
from salt_seg.model.builtin import pretrain_record
from salt_seg.prompts import Prompt, plane_axes

#: propagate until the mask is empty or the volume ends
NO_STOP = PropagationSettings(
    iou_threshold=0.0, stability_threshold=0.0, min_area_ratio=0.0, max_area_ratio=math.inf, min_area_px=1
)
VALIDATION_SEEDS = tuple(range(1000, 1030))
VALIDATION_SHAPE = (128, 128, 48)

GRID: dict[str, Sequence[Any]] = {
    "iou_threshold": (0.0, 0.5, 0.7, 0.8, 0.9),
    "stability_threshold": (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
    "min_area_ratio": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    "max_area_ratio": (math.inf, 3.0, 2.0),
    "min_area_px": (1, 4, 8, 16),
}


def validation_volume(
    seed: int, shape: tuple[int, int, int] = VALIDATION_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic 3-D object on a textured background.

    Returns:
        ``I x J x K`` float32 image in ``[0, 1]`` and the ``I x J x K`` bool object mask.
    """

    image, label = synthetic_3d(
        shape, n_objects=1, size=(0.2, 0.45), contrast=0.4, noise=0.06, texture=0.35, seed=seed
    )
    return image, label > 0


def middle_box_prompt(mask: np.ndarray, axis: int = 2) -> Prompt:
    """The tight box of ``mask`` on the middle slice of its extent along ``axis`` (source voxel prompt)."""
    others = tuple(d for d in range(3) if d != axis)
    span = np.nonzero(mask.any(axis=others))[0]
    k = int((span.min() + span.max()) // 2)
    sl = np.take(mask, k, axis=axis)
    us, vs = np.nonzero(sl)
    u, v = plane_axes(axis)
    assert (u, v) == others
    return Prompt(
        box=(float(us.min()), float(vs.min()), float(us.max()), float(vs.max())), slice_index=k, axis=axis
    )


@dataclass
class Step:
    """One decoded slice of an unstopped propagation, reduced to what the stop rules and Dice need."""

    slice_index: int
    score: float
    stability: float
    area: int
    inter: int  # pixels of the mask inside the object
    truth_area: int  # object pixels on the slice


@dataclass
class Trace:
    """One validation volume's unstopped propagation.

    Attributes:
        truth_voxels: object voxels in the whole volume.
        seed: the seed slice's step.
        steps: per direction (+1, -1), the decoded slices in order (the first empty mask ends a direction).
    """

    truth_voxels: int
    seed: Step
    steps: dict[int, list[Step]] = field(default_factory=dict)


def trace_from_result(res: PropagationResult, truth: np.ndarray) -> Trace:
    """Reduce an unstopped :class:`PropagationResult` against the ``n_slices x H x W`` truth."""

    def step(t) -> Step:  # noqa: ANN001 - PropagationStep
        inter = int(np.logical_and(res.mask(t.slice_index), truth[t.slice_index]).sum()) if t.area else 0
        return Step(t.slice_index, t.score, t.stability, t.area, inter, int(truth[t.slice_index].sum()))

    seed = step(res.trace[0])
    out = Trace(truth_voxels=int(truth.sum()), seed=seed)
    for d in (1, -1):
        out.steps[d] = [step(t) for t in res.trace[1:] if t.direction == d and t.area > 0]
    return out


def kept_steps(trace: Trace, s: PropagationSettings) -> list[Step]:
    """The slices setting ``s`` keeps on ``trace`` (the seed is kept when not empty)."""

    if trace.seed.area == 0:
        return []
    kept = [trace.seed]
    for d in (1, -1):
        prev = trace.seed.area
        for st in trace.steps.get(d, []):
            if stop_reason(st.score, st.stability, st.area, prev, s) is not None:
                break
            kept.append(st)
            prev = st.area
    return kept


def simulate(trace: Trace, s: PropagationSettings) -> float:
    """Volume Dice the setting ``s`` would reach on ``trace``."""
    kept = kept_steps(trace, s)
    total = sum(st.area for st in kept) + trace.truth_voxels
    return 1.0 if total == 0 else 2.0 * sum(st.inter for st in kept) / total


def leak_slices(trace: Trace, s: PropagationSettings) -> int:
    """Slices the setting ``s`` keeps beyond the object (a mask where the object has no voxel)."""
    return sum(1 for st in kept_steps(trace, s) if st.truth_area == 0 and st.area > 0)


def sweep(traces: Sequence[Trace], grid: dict[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """Mean / min volume Dice of every grid setting, best first (ties: stricter first, see the module docstring)."""
    grid = grid or GRID
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        s = PropagationSettings(**dict(zip(keys, values, strict=True)))
        d = np.array([simulate(t, s) for t in traces])
        leaks = sum(leak_slices(t, s) for t in traces)
        rows.append(
            {**s.to_dict(), "mean_dice": float(d.mean()), "min_dice": float(d.min()), "leak_slices": leaks}
        )
    best = max(r["mean_dice"] for r in rows)

    def key(r: dict[str, Any]) -> tuple:
        near = r["mean_dice"] >= best - 0.002
        if not near:
            return (False, 0, 0, 0, 0, r["mean_dice"])
        strict = (r["iou_threshold"], r["stability_threshold"], r["min_area_ratio"])
        return (True, -r["leak_slices"], *strict, r["mean_dice"])

    return sorted(rows, key=key, reverse=True)


def slice_dice_by_confidence(
    traces: Sequence[Trace],
    s: PropagationSettings,
    measure: str = "stability",
    bins: Sequence[float] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01),
) -> list[dict[str, Any]]:
    """Per confidence bin: kept slices and their median slice Dice (how far the confidence tells quality)."""
    rows: list[list[float]] = [[] for _ in range(len(bins) - 1)]
    for t in traces:
        for st in kept_steps(t, s):
            value = st.stability if measure == "stability" else st.score
            k = int(np.searchsorted(bins, value, side="right")) - 1
            rows[min(max(k, 0), len(rows) - 1)].append(2.0 * st.inter / max(st.area + st.truth_area, 1))
    return [
        {
            "from": bins[i],
            "to": min(bins[i + 1], 1.0),
            "slices": len(r),
            "median_slice_dice": float(np.median(r)) if r else None,
        }
        for i, r in enumerate(rows)
    ]


def trace_volume(
    model: Any, seed: int, record: Any = None, *, batch_size: int = 8, affine: np.ndarray | None = None
) -> Trace:
    """Generate validation volume ``seed``, propagate from its middle box without stopping, return the trace.

    ``record`` defaults to the built-in base's (``[0, 1]`` intensities, the model's input size).
    """

    image, obj = validation_volume(seed)
    record = record or pretrain_record(model.image_size)
    prepared = prepare_volume(Volume(image, np.eye(4) if affine is None else affine), record)
    prompt = prompt_to_prepared(middle_box_prompt(obj, 2), prepared)
    res = propagate(model, prepared, prompt, settings=NO_STOP, batch_size=batch_size)
    ras = prepared.source.into_ras(obj.astype(bool))
    truth = np.stack([extract_slice(ras, prepared.axis, i) for i in range(prepared.n_slices)])
    return trace_from_result(res, truth)
