"""Interactive prediction on one slice at a time.

A plain class, not an ``nn.Module`` (as ``segment_anything.SamPredictor``): it owns the model, the preprocessing
record and a small LRU cache of image embeddings keyed by a caller-chosen slice key, so a click on an already
embedded slice only runs the prompt encoder and the mask decoder (milliseconds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from salt_seg.model.hires import ImageFeatures
from salt_seg.model.precision import autocast, check_precision, to_float
from salt_seg.model.sam import InputPrompt, SamModel
from salt_seg.preprocessing import Preprocessing, SliceTransform, logits_to_original, prepare_slice
from salt_seg.prompts import Prompt, mirror_prompt


@dataclass
class Prediction:
    """Result of one prompt on one slice.

    Attributes:
        mask: ``H x W`` bool mask at the slice's original size.
        score: predicted IoU of the returned mask.
        low_res_logits: ``1 x h x w`` logits in model-input space (``h = w = S/4``, or ``S`` when the model has
            the full-resolution branch); with ``mirror``, the unmirrored view's.
        probabilities: ``H x W`` float32 sigmoid probabilities at the original size.
    """

    mask: np.ndarray
    score: float
    low_res_logits: torch.Tensor
    probabilities: np.ndarray


@dataclass
class MirroredEmbedding:
    """A slice's embedding and that of its left-right mirror image (a :class:`Predictor` with ``mirror``)."""

    plain: Any
    mirrored: Any


#: what :meth:`Predictor.compute_embedding` returns and the cache holds for one slice
Embedding = torch.Tensor | ImageFeatures | MirroredEmbedding

#: the logit given to pixels outside a prompt's box (probability 0, background at any threshold)
OUTSIDE_BOX_LOGIT = float("-inf")


def box_pixels(shape: tuple[int, ...], box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """Row and column slices of the pixels of an inclusive ``(x0, y0, x1, y1)`` box on an ``... x H x W`` grid,
    rounded outwards and clipped to the grid."""
    h, w = shape[-2:]
    x0, y0, x1, y1 = box
    c0, c1 = max(0, int(np.floor(x0))), min(w - 1, int(np.ceil(x1)))
    r0, r1 = max(0, int(np.floor(y0))), min(h - 1, int(np.ceil(y1)))
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def clip_logits_to_box(logits: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """``H x W`` logits with every pixel outside the box (:func:`box_pixels`) set to :data:`OUTSIDE_BOX_LOGIT`.

    A box prompt says the object lies inside it: training draws boxes around the whole mask and only ever pushes
    their sides outwards (:func:`salt_seg.data.prompts_sim.jitter_box`). On real structures the small bases still
    leak past the box (on colin27-aal's deep nuclei a fifth of the predicted pixels lay outside it); this keeps
    a box's answer where the user put it (:attr:`salt_seg.prompts.Prompt.box_bounds`).
    """
    inside = torch.zeros(logits.shape[-2:], dtype=torch.bool, device=logits.device)
    inside[box_pixels(logits.shape, box)] = True
    return torch.where(inside, logits, torch.full_like(logits, OUTSIDE_BOX_LOGIT))


def clip_probabilities_to_box(
    probabilities: np.ndarray, box: tuple[float, float, float, float]
) -> np.ndarray:
    """:func:`clip_logits_to_box` for ``H x W`` probabilities (0 outside the box), in place; returns the array."""
    rows, cols = box_pixels(probabilities.shape, box)
    keep = probabilities[rows, cols].copy()
    probabilities[...] = 0
    probabilities[rows, cols] = keep
    return probabilities


class Predictor:
    """Segment slices from prompts with a cached image embedding.

    Args:
        model: the (adapted, preferably merged) model; it is put in eval mode.
        record: the preprocessing record the model was trained with.
        device: where to run.
        cache_size: number of slice embeddings kept (LRU).
        threshold: logit threshold for the binary mask (0 = probability 0.5).
        precision: ``fp32``, ``bf16`` or ``fp16``: autocast of the encoder and the decoder
            (:mod:`salt_seg.model.precision`; logits are cast back to float32 before the sigmoid).
        mirror: test-time mirroring, as ``predict --mirror`` does for whole volumes: each slice is also embedded
            mirrored left-right, each prompt is decoded on both (mirrored with its slice) and the two probability
            maps are averaged. Twice the encoder time per slice and the decoder time per click.
    """

    def __init__(
        self,
        model: SamModel,
        record: Preprocessing,
        device: torch.device | str = "cpu",
        cache_size: int = 16,
        threshold: float = 0.0,
        precision: str = "fp32",
        mirror: bool = False,
    ) -> None:
        if record.image_size != model.image_size:
            raise ValueError(
                f"preprocessing image_size {record.image_size} does not match the model's input {model.image_size}"
            )
        self.model = model.eval().to(device)
        self.record = record
        self.device = torch.device(device)
        self.cache_size = int(cache_size)
        self.threshold = float(threshold)
        self.precision = check_precision(precision, self.device)
        self.mirror = bool(mirror)
        self._cache: OrderedDict[Hashable, tuple[Embedding, SliceTransform]] = OrderedDict()
        self._current: Hashable | None = None

    @torch.no_grad()
    def set_image(
        self, slice_2d: np.ndarray, key: Hashable = None, value_range: tuple[float, float] | None = None
    ) -> SliceTransform:
        """Embed a slice (or reuse the cached embedding of ``key``) and make it current.

        Args:
            slice_2d: ``H x W`` array in original intensities.
            key: cache key, e.g. ``(axis, index)``; ``None`` always recomputes.
            value_range: the volume's intensity range (see :func:`salt_seg.preprocessing.intensity_range`).
        """
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            self._current = key
            return self._cache[key][1]
        emb, tf = self.compute_embedding(slice_2d, value_range)
        key = key if key is not None else ("__last__",)
        self.add_embedding(key, emb, tf)
        self._current = key
        return tf

    @torch.no_grad()
    def compute_embedding(
        self, slice_2d: np.ndarray, value_range: tuple[float, float] | None = None
    ) -> tuple[Embedding, SliceTransform]:
        """The ``1 x C x h x w`` image embedding of a slice, without touching the cache.

        It only reads the model, so a background thread may call it while another thread decodes prompts (the
        viewer precomputes nearby slices this way and hands the result to :meth:`add_embedding`).
        """
        emb, tf = self._encode(slice_2d, value_range)
        if self.mirror:
            return MirroredEmbedding(emb, self._encode(slice_2d[:, ::-1], value_range)[0]), tf
        return emb, tf

    def _encode(
        self, slice_2d: np.ndarray, value_range: tuple[float, float] | None
    ) -> tuple[Any, SliceTransform]:
        """One view's embedding (subclasses with another runtime replace this)."""
        image, tf = prepare_slice(np.ascontiguousarray(slice_2d), self.record, value_range)
        with autocast(self.precision, self.device):
            return self.model.encode_images(image[None].to(self.device)), tf

    def _decode(
        self, embedding: Any, prompt: InputPrompt, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``1 x M x h x w`` float32 logits and ``1 x M`` predicted IoU of one prompt on a cached embedding."""
        with autocast(self.precision, self.device):
            logits, iou = self.model.decode_prompts(
                embedding, [prompt], [0], multimask_output=multimask_output
            )
        return to_float(logits), to_float(iou)

    def add_embedding(self, key: Hashable, embedding: Embedding, transform: SliceTransform) -> None:
        """Store an embedding from :meth:`compute_embedding` under ``key`` (LRU; the current slice is unchanged)."""
        self._cache[key] = (embedding, transform)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            evicted, _ = self._cache.popitem(last=False)
            if evicted == self._current:
                self._current = None

    def is_cached(self, key: Hashable) -> bool:
        return key in self._cache

    def clear(self) -> None:
        self._cache.clear()
        self._current = None

    @property
    def transform(self) -> SliceTransform:
        if self._current is None:
            raise RuntimeError("call set_image() before predict()")
        return self._cache[self._current][1]

    @torch.no_grad()
    def predict(
        self, prompt: Prompt, multimask_output: bool = False, clip_to_box: bool | None = None
    ) -> Prediction:
        """Segment the current slice from one prompt (slice-pixel coordinates).

        With ``multimask_output`` SAM's three candidates are scored and the best predicted IoU is returned.
        A prompt with a box gets no foreground outside the box (:func:`clip_logits_to_box`) when ``clip_to_box``
        is True, or, by default, when the prompt says so (:attr:`~salt_seg.prompts.Prompt.box_bounds`);
        ``low_res_logits`` stay the model's own.
        """
        if clip_to_box is None:
            clip_to_box = prompt.box_bounds
        if self._current is None:
            raise RuntimeError("call set_image() before predict()")
        emb, tf = self._cache[self._current]
        views = [(emb, prompt, False)]
        if isinstance(emb, MirroredEmbedding):
            views = [
                (emb.plain, prompt, False),
                (emb.mirrored, mirror_prompt(prompt, tf.original_size[1]), True),
            ]
        probs_sum: torch.Tensor | None = None
        scores, lows = [], []
        for view_emb, view_prompt, flipped in views:
            logits, iou = self._decode(view_emb, InputPrompt.from_prompt(view_prompt, tf), multimask_output)
            best = int(iou[0].argmax())
            low = logits[0, best : best + 1]
            full = logits_to_original(low, tf)[0]
            if flipped:
                full = full.flip(-1)
            if clip_to_box and prompt.box is not None:
                full = clip_logits_to_box(full, prompt.box)
            p = torch.sigmoid(full)
            probs_sum = p if probs_sum is None else probs_sum + p
            scores.append(float(iou[0, best]))
            lows.append(low)
        assert probs_sum is not None
        if len(views) == 1:
            mask = (full > self.threshold).cpu().numpy()
            probs = probs_sum.cpu().numpy().astype(np.float32)
        else:
            probs = (probs_sum / len(views)).cpu().numpy().astype(np.float32)
            mask = probs > float(torch.sigmoid(torch.tensor(self.threshold)))
        return Prediction(
            mask=mask,
            score=float(np.mean(scores)),
            low_res_logits=lows[0].cpu(),
            probabilities=probs,
        )
