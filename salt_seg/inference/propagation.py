"""Propagation: from one prompt on one slice, segment the neighbouring slices in both directions.

MedSAM's recipe: the box for slice ``i +/- 1`` is the bounding box of the mask kept on slice ``i`` (optionally
widened by ``box_margin_px``). A direction stops at the first slice whose prediction fails a check, and that slice
is *not* kept:

* ``min_area``: the mask has fewer than ``min_area_px`` pixels (or is empty: the structure ended);
* ``iou``: the model's predicted IoU is below ``iou_threshold`` (0 disables the check; the built-in bases train
  SAM's IoU head, and on base v2 it is the rule that stops leaks, see the README);
* ``stability``: SAM's stability score of the mask (``|logit > 1| / |logit > -1|``, no trained head needed) is
  below ``stability_threshold`` (0 disables);
* ``area_ratio``: the mask is smaller than ``min_area_ratio`` x the previous kept mask (the structure ended and the
  model clings to a speck), or larger than ``max_area_ratio`` x it (it leaked into a neighbour);
* ``edge``: the volume ends; ``limit``: ``max_slices`` were kept in that direction.

The seed slice is always kept when its mask is not empty (the user asked for it). The default thresholds were
chosen on generated validation volumes (see :mod:`salt_seg.inference.calibration` and the README); pass your own
:class:`PropagationSettings` to change them.

Several prompts propagate in lockstep, so each step decodes all their fronts in one batched call and encodes the
slices ahead of them in batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salt_seg.data.pipeline import PreparedVolume
from salt_seg.inference.backend import Backend, make_backend
from salt_seg.prompts import Prompt

#: why a direction stopped
STOP_REASONS = ("edge", "iou", "stability", "min_area", "area_ratio", "limit", "seed_empty")
DIRECTIONS = {1: "up", -1: "down"}


@dataclass(frozen=True)
class PropagationSettings:
    """When propagation stops (see the module docstring); defaults chosen on validation data (README).

    Attributes:
        iou_threshold: stop when the predicted IoU falls below this (0: never).
        stability_threshold: stop when the mask's stability score falls below this (0: never).
        min_area_ratio: stop when the mask area falls below this fraction of the previous slice's.
        max_area_ratio: stop when the mask area exceeds this multiple of the previous slice's (``inf``: never).
        min_area_px: stop when the mask has fewer pixels than this.
        box_margin_px: widen the box from the previous mask by this many pixels on every side.
        max_slices: keep at most this many slices per direction (``None``: no limit).
    """

    iou_threshold: float = 0.7
    stability_threshold: float = 0.4
    min_area_ratio: float = 0.5
    max_area_ratio: float = math.inf
    min_area_px: int = 1
    box_margin_px: float = 0.0
    max_slices: int | None = None

    def __post_init__(self) -> None:
        for name in ("iou_threshold", "stability_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PropagationSettings.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.min_area_ratio <= 1.0:
            raise ValueError(
                f"PropagationSettings.min_area_ratio must be in [0, 1], got {self.min_area_ratio}"
            )
        if not self.max_area_ratio >= 1.0:
            raise ValueError(f"PropagationSettings.max_area_ratio must be >= 1, got {self.max_area_ratio}")
        if int(self.min_area_px) < 1:
            raise ValueError(f"PropagationSettings.min_area_px must be >= 1, got {self.min_area_px}")
        if self.box_margin_px < 0:
            raise ValueError(f"PropagationSettings.box_margin_px must be >= 0, got {self.box_margin_px}")
        if self.max_slices is not None and int(self.max_slices) < 0:
            raise ValueError(f"PropagationSettings.max_slices must be >= 0 or None, got {self.max_slices}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in self.__dict__.items()}


@dataclass
class PropagationStep:
    """One decoded slice of a propagation (the trace used to calibrate thresholds).

    Attributes:
        slice_index: model slice index.
        direction: +1 (increasing index) or -1; 0 for the seed.
        score: predicted IoU.
        stability: stability score.
        area: mask pixels.
        prev_area: pixels of the previous kept mask (0 for the seed).
        reason: the stop reason if the slice was rejected, else ``None``.
    """

    slice_index: int
    direction: int
    score: float
    stability: float
    area: int
    prev_area: int
    reason: str | None = None


@dataclass
class PropagationResult:
    """What one propagation kept.

    Attributes:
        prompt: the seed prompt (model slice pixels).
        probabilities: kept slice index -> ``H x W`` float32 probabilities.
        scores: predicted IoU of every decoded slice, kept or not.
        stability: stability score of every decoded slice, kept or not.
        stopped: ``{"up": reason, "down": reason}`` (:data:`STOP_REASONS`).
        trace: every decoded slice in order (:class:`PropagationStep`).
    """

    prompt: Prompt
    probabilities: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    stability: dict[int, float] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    trace: list[PropagationStep] = field(default_factory=list)

    @property
    def slices(self) -> list[int]:
        """Kept slice indices, sorted."""
        return sorted(self.probabilities)

    def mask(self, index: int) -> np.ndarray:
        """``H x W`` bool mask of a kept slice."""
        return self.probabilities[index] > 0.5


def box_from_mask(mask: np.ndarray, margin: float = 0.0) -> tuple[float, float, float, float]:
    """Inclusive ``(x0, y0, x1, y1)`` bounding box of a non-empty ``H x W`` mask, widened and clipped to the slice."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        float(max(xs.min() - margin, 0)),
        float(max(ys.min() - margin, 0)),
        float(min(xs.max() + margin, w - 1)),
        float(min(ys.max() + margin, h - 1)),
    )


@dataclass
class _Front:
    result: PropagationResult
    direction: int
    index: int
    mask: np.ndarray
    area: int
    kept: int = 0


def stop_reason(
    score: float, stability: float, area: int, prev_area: int, s: PropagationSettings
) -> str | None:
    """Why a slice fails the stop rules (``None``: keep it and go on); ``prev_area`` is the last kept mask's."""
    if area < s.min_area_px:
        return "min_area"
    if s.iou_threshold > 0 and score < s.iou_threshold:
        return "iou"
    if s.stability_threshold > 0 and stability < s.stability_threshold:
        return "stability"
    if area < s.min_area_ratio * prev_area or area > s.max_area_ratio * prev_area:
        return "area_ratio"
    return None


def propagate_many(
    backend: Backend,
    prompts: Sequence[Prompt],
    settings: PropagationSettings | None = None,
    *,
    on_decoded: Callable[[int], None] | None = None,
) -> list[PropagationResult]:
    """Propagate several seed prompts at once (see :func:`propagate`).

    Args:
        backend: a :class:`~salt_seg.inference.backend.Backend` on the prepared volume.
        prompts: seed prompts in model-slice pixels, each with ``slice_index`` and a box or points.
        settings: stop rules.
        on_decoded: called with the number of slices decoded at each step (progress bars).

    Raises:
        ValueError: a prompt without ``slice_index`` or without geometry.
    """
    s = settings or PropagationSettings()
    prepared = backend.prepared
    n = prepared.n_slices
    for i, p in enumerate(prompts):
        if p.is_automatic:
            raise ValueError(f"prompt #{i}: propagation needs a box or points to start from")
        if p.slice_index is None or not 0 <= int(p.slice_index) < n:
            raise ValueError(
                f"prompt #{i}: propagation needs a slice_index in 0..{n - 1}, got {p.slice_index}"
            )
    results = [PropagationResult(prompt=p) for p in prompts]
    if not prompts:
        return results
    seeds = backend.decode([(int(p.slice_index), p) for p in prompts])  # type: ignore[arg-type]
    if on_decoded:
        on_decoded(len(seeds))
    fronts: list[_Front] = []
    for res, out in zip(results, seeds, strict=True):
        k = int(res.prompt.slice_index)  # type: ignore[arg-type]
        mask = out.mask
        area = int(mask.sum())
        res.scores[k] = out.score
        res.stability[k] = out.stability
        res.trace.append(
            PropagationStep(k, 0, out.score, out.stability, area, 0, None if area else "min_area")
        )
        if area == 0:
            res.stopped = {"up": "seed_empty", "down": "seed_empty"}
            continue
        res.probabilities[k] = out.probabilities
        fronts += [_Front(res, d, k + d, mask, area) for d in (1, -1)]
    axis = prepared.axis
    while fronts:
        active = []
        for f in fronts:
            name = DIRECTIONS[f.direction]
            if not 0 <= f.index < n:
                f.result.stopped[name] = "edge"
            elif s.max_slices is not None and f.kept >= s.max_slices:
                f.result.stopped[name] = "limit"
            else:
                active.append(f)
        if not active:
            break
        ahead = max(1, min(backend.batch_size, getattr(backend, "cache_slices", 8) // (2 * len(active))))
        backend.prefetch(
            f.index + f.direction * j
            for f in active
            for j in range(ahead)
            if 0 <= f.index + f.direction * j < n
        )
        items = [
            (
                f.index,
                Prompt(
                    box=box_from_mask(f.mask, s.box_margin_px),
                    class_id=f.result.prompt.class_id,
                    slice_index=f.index,
                    axis=axis,
                    box_bounds=False,  # the structure may grow past the previous slice's box
                ),
            )
            for f in active
        ]
        outs = backend.decode(items)
        if on_decoded:
            on_decoded(len(outs))
        fronts = []
        for f, out in zip(active, outs, strict=True):
            mask = out.mask
            area = int(mask.sum())
            reason = stop_reason(out.score, out.stability, area, f.area, s)
            f.result.scores[f.index] = out.score
            f.result.stability[f.index] = out.stability
            f.result.trace.append(
                PropagationStep(f.index, f.direction, out.score, out.stability, area, f.area, reason)
            )
            if reason is not None:
                f.result.stopped[DIRECTIONS[f.direction]] = reason
                continue
            f.result.probabilities[f.index] = out.probabilities
            fronts.append(_Front(f.result, f.direction, f.index + f.direction, mask, area, f.kept + 1))
    return results


def propagate(
    model: Any,
    prepared: PreparedVolume,
    prompt: Prompt,
    *,
    settings: PropagationSettings | None = None,
    batch_size: int = 8,
    device: Any = None,
) -> PropagationResult:
    """Segment a structure through the volume from one prompt on one slice.

    Args:
        model: a :class:`~salt_seg.model.sam.SamModel`, a :class:`~salt_seg.model.predictor.Predictor` (the
            viewer's, with its embedding cache) or a backend from :func:`~salt_seg.inference.backend.make_backend`.
        prepared: the volume (:func:`salt_seg.data.prepare_volume`).
        prompt: the seed in model-slice pixels (:func:`salt_seg.inference.coords.prompt_to_prepared` maps a
            source-voxel prompt), with ``slice_index`` and a box or points.
        settings: stop rules (default: the calibrated ones).
        batch_size: slices per image-encoder call.
        device: run the model here.

    Returns:
        The kept slices' probabilities, every decoded slice's predicted IoU and why each direction stopped.
    """
    backend = make_backend(model, prepared, device=device, batch_size=batch_size)
    return propagate_many(backend, [prompt], settings)[0]
