"""Interactive prediction on one slice at a time.

A plain class, not an ``nn.Module`` (as ``segment_anything.SamPredictor``): it owns the model, the preprocessing
record and a small LRU cache of image embeddings keyed by a caller-chosen slice key, so a click on an already
embedded slice only runs the prompt encoder and the mask decoder (milliseconds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch

from salt_seg.model.hires import ImageFeatures
from salt_seg.model.sam import InputPrompt, SamModel
from salt_seg.preprocessing import Preprocessing, SliceTransform, logits_to_original, prepare_slice
from salt_seg.prompts import Prompt


@dataclass
class Prediction:
    """Result of one prompt on one slice.

    Attributes:
        mask: ``H x W`` bool mask at the slice's original size.
        score: predicted IoU of the returned mask.
        low_res_logits: ``1 x h x w`` logits in model-input space (``h = w = S/4``, or ``S`` when the model has
            the full-resolution branch).
        probabilities: ``H x W`` float32 sigmoid probabilities at the original size.
    """

    mask: np.ndarray
    score: float
    low_res_logits: torch.Tensor
    probabilities: np.ndarray


class Predictor:
    """Segment slices from prompts with a cached image embedding.

    Args:
        model: the (adapted, preferably merged) model; it is put in eval mode.
        record: the preprocessing record the model was trained with.
        device: where to run.
        cache_size: number of slice embeddings kept (LRU).
        threshold: logit threshold for the binary mask (0 = probability 0.5).
    """

    def __init__(
        self,
        model: SamModel,
        record: Preprocessing,
        device: torch.device | str = "cpu",
        cache_size: int = 16,
        threshold: float = 0.0,
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
        self._cache: OrderedDict[Hashable, tuple[torch.Tensor | ImageFeatures, SliceTransform]] = (
            OrderedDict()
        )
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
    ) -> tuple[torch.Tensor | ImageFeatures, SliceTransform]:
        """The ``1 x C x h x w`` image embedding of a slice, without touching the cache.

        It only reads the model, so a background thread may call it while another thread decodes prompts (the
        viewer precomputes nearby slices this way and hands the result to :meth:`add_embedding`).
        """
        image, tf = prepare_slice(slice_2d, self.record, value_range)
        return self.model.encode_images(image[None].to(self.device)), tf

    def add_embedding(
        self, key: Hashable, embedding: torch.Tensor | ImageFeatures, transform: SliceTransform
    ) -> None:
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
    def predict(self, prompt: Prompt, multimask_output: bool = False) -> Prediction:
        """Segment the current slice from one prompt (slice-pixel coordinates).

        With ``multimask_output`` SAM's three candidates are scored and the best predicted IoU is returned.
        """
        if self._current is None:
            raise RuntimeError("call set_image() before predict()")
        emb, tf = self._cache[self._current]
        ip = InputPrompt.from_prompt(prompt, tf)
        logits, iou = self.model.decode_prompts(emb, [ip], [0], multimask_output=multimask_output)
        best = int(iou[0].argmax())
        low = logits[0, best : best + 1]
        full = logits_to_original(low, tf)[0]
        probs = torch.sigmoid(full).cpu().numpy().astype(np.float32)
        return Prediction(
            mask=(full > self.threshold).cpu().numpy(),
            score=float(iou[0, best]),
            low_res_logits=low.cpu(),
            probabilities=probs,
        )
