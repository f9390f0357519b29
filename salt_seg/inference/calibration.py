"""Choosing propagation thresholds on generated validation volumes.

Procedure (run by ``bench/bench_predict.py --calibrate``; the numbers are in the README and BENCHMARKS.md):

1. Generate validation volumes: one synthetic 3-D object each (:func:`validation_volume`; ellipsoids, cuboids,
   cylinders, textured background, noise -- the appearance the built-in base was pretrained on, in 3-D), seeds
   disjoint from the acceptance test's.
2. On each, put the tight box of the object's middle slice (:func:`middle_box_prompt`) and propagate with no
   stop rule but "the mask is empty" (:data:`NO_STOP`), recording every slice's mask, predicted IoU and area.
3. Because a stop rule only cuts a direction at its first failing slice, every candidate setting's result is a
   prefix of these traces: :func:`simulate` scores a grid of settings exactly, without re-running the model.
4. Keep the setting with the best mean volume Dice; among settings within 0.002 of it, prefer the stricter one
   (higher IoU threshold, then higher area ratio), which costs nothing on validation data and guards better
   against running past the structure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salt_seg.inference.propagation import PropagationResult, PropagationSettings
from salt_seg.prompts import Prompt, plane_axes

#: propagate until the mask is empty or the volume ends
NO_STOP = PropagationSettings(iou_threshold=0.0, min_area_ratio=0.0, max_area_ratio=math.inf, min_area_px=1)
VALIDATION_SEEDS = tuple(range(1000, 1030))
VALIDATION_SHAPE = (128, 128, 48)

GRID: dict[str, Sequence[Any]] = {
    "iou_threshold": (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
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
    from salt_seg.data import synthetic_3d

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
class Trace:
    """One validation volume's unstopped propagation (prepared grid == source grid: RAS, no resampling).

    Attributes:
        truth: ``n_slices x H x W`` bool object mask, display-oriented slices.
        seed: seed slice index.
        masks: slice -> predicted ``H x W`` bool mask (every decoded non-empty slice).
        steps: per direction (+1, -1), the ``(slice, score, area)`` sequence in order.
    """

    truth: np.ndarray
    seed: int
    masks: dict[int, np.ndarray]
    steps: dict[int, list[tuple[int, float, int]]] = field(default_factory=dict)


def trace_from_result(res: PropagationResult, truth: np.ndarray) -> Trace:
    seed = int(res.prompt.slice_index)  # type: ignore[arg-type]
    t = Trace(truth=truth, seed=seed, masks={i: res.mask(i) for i in res.slices})
    for d in (1, -1):
        t.steps[d] = [(s.slice_index, s.score, s.area) for s in res.trace if s.direction == d]
    return t


def simulate(trace: Trace, s: PropagationSettings) -> float:
    """Volume Dice the setting ``s`` would reach on ``trace`` (the seed slice is always kept)."""
    kept = [trace.seed] if trace.seed in trace.masks else []
    for d in (1, -1):
        prev = int(trace.masks[trace.seed].sum()) if kept else 0
        for index, score, area in trace.steps.get(d, []):
            if (
                score < s.iou_threshold
                or area < s.min_area_px
                or area < s.min_area_ratio * prev
                or area > s.max_area_ratio * prev
            ):
                break
            kept.append(index)
            prev = area
    inter = sum(int(np.logical_and(trace.masks[i], trace.truth[i]).sum()) for i in kept)
    pred = sum(int(trace.masks[i].sum()) for i in kept)
    total = pred + int(trace.truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def sweep(traces: Sequence[Trace], grid: dict[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """Mean / min volume Dice of every grid setting, best first (ties: stricter first, see the module docstring)."""
    grid = grid or GRID
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        s = PropagationSettings(**dict(zip(keys, values, strict=True)))
        d = np.array([simulate(t, s) for t in traces])
        rows.append({**s.to_dict(), "mean_dice": float(d.mean()), "min_dice": float(d.min())})
    best = max(r["mean_dice"] for r in rows)

    def key(r: dict[str, Any]) -> tuple:
        near = r["mean_dice"] >= best - 0.002
        return (near, r["iou_threshold"] if near else 0, r["min_area_ratio"] if near else 0, r["mean_dice"])

    return sorted(rows, key=key, reverse=True)


def slice_dice_by_score(
    traces: Sequence[Trace],
    s: PropagationSettings,
    bins: Sequence[float] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01),
) -> list[dict[str, Any]]:
    """Per predicted-IoU bin: how many kept slices and their median slice Dice (to set the flag threshold)."""
    rows: list[list[float]] = [[] for _ in range(len(bins) - 1)]
    for t in traces:
        kept: list[tuple[int, float]] = []
        seed_score = next((sc for i, sc, _ in t.steps.get(0, [])), None)
        if seed_score is not None:
            kept.append((t.seed, seed_score))
        for d in (1, -1):
            prev = int(t.masks[t.seed].sum()) if t.seed in t.masks else 0
            for index, score, area in t.steps.get(d, []):
                if (
                    score < s.iou_threshold
                    or area < s.min_area_px
                    or area < s.min_area_ratio * prev
                    or area > s.max_area_ratio * prev
                ):
                    break
                kept.append((index, score))
                prev = area
        for index, score in kept:
            a, b = t.masks[index], t.truth[index]
            tot = int(a.sum() + b.sum())
            dsc = 1.0 if tot == 0 else 2.0 * int(np.logical_and(a, b).sum()) / tot
            k = int(np.searchsorted(bins, score, side="right")) - 1
            rows[min(max(k, 0), len(rows) - 1)].append(dsc)
    return [
        {
            "score_from": bins[i],
            "score_to": min(bins[i + 1], 1.0),
            "slices": len(r),
            "median_slice_dice": float(np.median(r)) if r else None,
        }
        for i, r in enumerate(rows)
    ]


def trace_volume(model: Any, seed: int, *, batch_size: int = 8, affine: np.ndarray | None = None) -> Trace:
    """Generate validation volume ``seed``, propagate from its middle box without stopping, return the trace."""
    from salt_seg.data import Volume, extract_slice, prepare_volume
    from salt_seg.inference.coords import prompt_to_prepared
    from salt_seg.inference.propagation import propagate
    from salt_seg.training.pretrain import pretrain_record

    image, obj = validation_volume(seed)
    prepared = prepare_volume(Volume(image, np.eye(4) if affine is None else affine), pretrain_record())
    prompt = prompt_to_prepared(middle_box_prompt(obj, 2), prepared)
    res = propagate(model, prepared, prompt, settings=NO_STOP, batch_size=batch_size)
    ras = Volume(obj.astype(np.uint8), prepared.source.affine).to_ras().data.astype(bool)
    truth = np.stack([extract_slice(ras, prepared.axis, i) for i in range(prepared.n_slices)])
    t = trace_from_result(res, truth)
    seed_step = res.trace[0]
    t.steps[0] = [(seed_step.slice_index, seed_step.score, seed_step.area)]
    return t
