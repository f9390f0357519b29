"""Decoding prompts on the slices of one prepared volume: batched and cached, on a model or on a Predictor.

Both backends answer the same question -- "for these ``(slice index, prompt)`` pairs, what are the mask
probabilities and predicted IoUs?" -- so segmentation and propagation are written once:

* :class:`ModelBackend` encodes slices in batches of ``batch_size`` (``B x 3 x S x S`` through the image encoder
  at once) and keeps an LRU cache of embeddings, then decodes all prompts of a call in one
  :meth:`~salt_seg.model.sam.SamModel.decode_prompts` (each prompt against its own slice's embedding).
* :class:`PredictorBackend` reuses a :class:`~salt_seg.model.predictor.Predictor` and its embedding cache (the
  viewer's), one slice at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from salt_seg.data.pipeline import PreparedVolume
from salt_seg.model.hires import ImageFeatures, stack_embeddings
from salt_seg.model.precision import autocast, check_precision, to_float
from salt_seg.model.predictor import Predictor
from salt_seg.model.sam import InputPrompt, SamModel
from salt_seg.preprocessing import SliceTransform, logits_to_original
from salt_seg.prompts import Prompt

#: SAM's stability-score thresholds (logits +1 / -1) expressed as probabilities
_STABLE_HI = float(1.0 / (1.0 + np.exp(-1.0)))
_STABLE_LO = float(1.0 / (1.0 + np.exp(1.0)))


def stability_score(probabilities: np.ndarray) -> float:
    """SAM's stability score of a mask: ``|logit > +1| / |logit > -1|`` (1 = crisp, 0 = empty or all doubt).

    Unlike the predicted IoU it needs no trained IoU head, so it is meaningful for any model.
    """
    p = np.asarray(probabilities)
    union = int((p > _STABLE_LO).sum())
    return 0.0 if union == 0 else float((p > _STABLE_HI).sum()) / union


@dataclass
class SliceOutput:
    """One prompt's result on one slice.

    Attributes:
        probabilities: ``H x W`` float32 sigmoid probabilities at the slice's size (prepared grid pixels).
        score: the model's predicted IoU of the mask ``probabilities > 0.5`` (meaningful only when the model's
            IoU head was trained, e.g. Meta's SAM; salt_seg's own training does not train it).
        stability: SAM's stability score of the mask (:func:`stability_score`).
    """

    probabilities: np.ndarray
    score: float
    stability: float = 0.0

    @property
    def mask(self) -> np.ndarray:
        """``H x W`` bool mask (probability > 0.5, i.e. logit > 0)."""
        return self.probabilities > 0.5


class Backend(Protocol):
    """What segmentation and propagation need from a model."""

    prepared: PreparedVolume
    batch_size: int

    def prefetch(self, indices: Iterable[int]) -> None: ...

    def decode(self, items: Sequence[tuple[int, Prompt]]) -> list[SliceOutput]: ...


def slice_array(prepared: PreparedVolume, index: int) -> np.ndarray:
    """Slice ``index`` as the ``H x W`` (or ``H x W x C``) array :func:`~salt_seg.preprocessing.prepare_slice` takes."""
    s = prepared.slice_image(index)
    return s[0] if s.shape[0] == 1 else np.moveaxis(s, 0, -1)


class ModelBackend:
    """Batched, cached slice embeddings of one prepared volume on a :class:`~salt_seg.model.sam.SamModel`.

    Args:
        model: the model (eval mode is set; it is not moved unless ``device`` is given).
        prepared: the volume; its record's ``image_size`` must match the model's input.
        device: move the model here first; default: where its parameters are.
        batch_size: slices per image-encoder call.
        cache_slices: embeddings kept (LRU); default ``4 * batch_size``, at least 8.
        multimask_output: decode SAM's three candidate masks and keep the best predicted IoU.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast, :mod:`salt_seg.model.precision`); embeddings are
            cached in what the encoder returns, logits are cast to float32 before the sigmoid.
    """

    def __init__(
        self,
        model: SamModel,
        prepared: PreparedVolume,
        *,
        device: torch.device | str | None = None,
        batch_size: int = 8,
        cache_slices: int | None = None,
        multimask_output: bool = False,
        precision: str = "fp32",
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prepared.record.image_size != model.image_size:
            raise ValueError(
                f"{prepared.name}: prepared for image_size {prepared.record.image_size}, the model takes "
                f"{model.image_size}"
            )
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        param = next(iter(model.parameters()), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.prepared = prepared
        self.batch_size = int(batch_size)
        self.cache_slices = max(int(cache_slices or 4 * self.batch_size), 8, self.batch_size)
        self.multimask_output = bool(multimask_output)
        self.precision = check_precision(precision, self.device)
        self._cache: OrderedDict[int, torch.Tensor | ImageFeatures] = OrderedDict()
        self._transform: SliceTransform | None = None
        self.encoded = 0  # slices run through the image encoder (for tests and benchmarks)

    @property
    def transform(self) -> SliceTransform:
        if self._transform is None:
            _, self._transform = self.prepared.model_input(0)
        return self._transform

    @torch.inference_mode()
    def prefetch(self, indices: Iterable[int]) -> None:
        """Encode the slices among ``indices`` that are not cached, ``batch_size`` at a time."""
        todo = list(dict.fromkeys(int(i) for i in indices if int(i) not in self._cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            images = []
            for i in chunk:
                x, tf = self.prepared.model_input(i)
                self._transform = self._transform or tf
                images.append(x)
            with autocast(self.precision, self.device):
                emb = self.model.encode_images(torch.stack(images).to(self.device))
            self.encoded += len(chunk)
            for i, e in zip(chunk, emb, strict=True):
                self._cache[i] = e
                self._cache.move_to_end(i)
        while len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)

    @torch.inference_mode()
    def decode(self, items: Sequence[tuple[int, Prompt]]) -> list[SliceOutput]:
        """Probabilities and predicted IoU for each ``(slice index, prompt)`` (prompt in slice pixels)."""
        # never hold more distinct slices than the cache keeps
        step_slices = max(1, self.cache_slices // 2)
        order = list(dict.fromkeys(int(i) for i, _ in items))
        groups = [set(order[s : s + step_slices]) for s in range(0, len(order), step_slices)]
        results: dict[int, SliceOutput] = {}
        for group in groups:
            members = [n for n, (i, _) in enumerate(items) if int(i) in group]
            self.prefetch(sorted(group))
            uniq = sorted(group)
            emb = stack_embeddings([self._cache[i] for i in uniq])
            tf = self.transform
            prompts = [InputPrompt.from_prompt(items[n][1], tf) for n in members]
            index = [uniq.index(int(items[n][0])) for n in members]
            with autocast(self.precision, self.device):
                logits, iou = self.model.decode_prompts(
                    emb, prompts, index, multimask_output=self.multimask_output
                )
            logits, iou = to_float(logits), to_float(iou)
            best = iou.argmax(dim=1)
            rows = torch.arange(len(members), device=logits.device)
            low = logits[rows, best]  # P x h x w
            score = iou[rows, best]
            probs = torch.sigmoid(logits_to_original(low, tf)).float().cpu().numpy()
            for j, n in enumerate(members):
                results[n] = SliceOutput(probs[j], float(score[j]), stability_score(probs[j]))
        return [results[n] for n in range(len(items))]


class PredictorBackend:
    """The same interface on a :class:`~salt_seg.model.predictor.Predictor` (reuses its embedding cache).

    Slices are embedded under the key ``(prepared.name, prepared.axis, index)``.
    """

    def __init__(self, predictor: Predictor, prepared: PreparedVolume, *, batch_size: int = 1) -> None:
        if predictor.record.image_size != prepared.record.image_size:
            raise ValueError(
                f"{prepared.name}: prepared for image_size {prepared.record.image_size}, the predictor's record "
                f"says {predictor.record.image_size}"
            )
        self.predictor = predictor
        self.prepared = prepared
        self.batch_size = max(1, int(batch_size))

    def _key(self, index: int) -> tuple[str, int, int]:
        return (self.prepared.name, self.prepared.axis, int(index))

    def prefetch(self, indices: Iterable[int]) -> None:  # the predictor embeds on demand
        return None

    def decode(self, items: Sequence[tuple[int, Prompt]]) -> list[SliceOutput]:
        out = []
        for index, prompt in items:
            self.predictor.set_image(slice_array(self.prepared, index), self._key(index), (0.0, 1.0))
            # unclipped, as ModelBackend: propagation's boxes come from the previous slice's mask, and a structure
            # may grow past them
            pred = self.predictor.predict(prompt, clip_to_box=False)
            probs = pred.probabilities.astype(np.float32, copy=False)
            out.append(SliceOutput(probs, float(pred.score), stability_score(probs)))
        return out


def make_backend(
    model: Any,
    prepared: PreparedVolume,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
) -> Backend:
    """A backend for a :class:`SamModel`, a :class:`Predictor`, a model with its own backends (an object with
    ``backend_for(prepared, batch_size=...)``, e.g. :class:`salt_seg.inference.onnx_model.OnnxModel`) or an
    existing backend (returned as is). ``precision`` applies to a :class:`SamModel` (a predictor has its own)."""
    if hasattr(model, "prefetch") and hasattr(model, "decode") and hasattr(model, "prepared"):
        if model.prepared is not prepared:
            raise ValueError("the backend was made for another prepared volume")
        return model
    if isinstance(model, Predictor):
        return PredictorBackend(model, prepared, batch_size=batch_size)
    if hasattr(model, "backend_for"):
        if precision != "fp32":
            raise ValueError(
                f"--precision {precision} applies to the PyTorch backend only; this model runs fp32"
            )
        return model.backend_for(prepared, batch_size=batch_size)
    if isinstance(model, SamModel) or hasattr(model, "decode_prompts"):
        return ModelBackend(model, prepared, device=device, batch_size=batch_size, precision=precision)
    raise TypeError(f"expected a SamModel, a Predictor or a backend, got {type(model).__name__}")
