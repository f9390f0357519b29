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
from salt_seg.model.predictor import Predictor, clip_probabilities_to_box
from salt_seg.model.sam import InputPrompt, SamModel
from salt_seg.preprocessing import SliceTransform, logits_to_original, prepare_slice
from salt_seg.prompts import Prompt, mirror_prompt

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
            IoU head was trained: Meta's SAM, or a salt_seg run that trains the mask decoder, whose loss includes
            the IoU head's error).
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


def check_backend_inputs(batch_size: int, prepared: PreparedVolume, image_size: int) -> None:
    """A volume backend's arguments: a positive batch size, a volume prepared at the model's input size."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if prepared.record.image_size != image_size:
        raise ValueError(
            f"{prepared.name}: prepared for image_size {prepared.record.image_size}, the model takes {image_size}"
        )


class ModelBackend:
    """Batched, cached slice embeddings of one prepared volume on a :class:`~salt_seg.model.sam.SamModel`.

    Args:
        model: the model (eval mode is set; it is not moved unless ``device`` is given).
        prepared: the volume; its record's ``image_size`` must match the model's input.
        device: move the model here first; default: where its parameters are.
        batch_size: slices per image-encoder call.
        cache_slices: embeddings kept (LRU); default ``4 * batch_size``, at least 8.
        multimask_output: decode SAM's three candidate masks and keep the best predicted IoU.
        mirror: test-time augmentation: every slice is also encoded and decoded mirrored left-right (prompts
            mirrored with it), and the two probability maps are averaged (nnU-Net's default mirroring, in-plane
            only). Twice the compute.
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
        mirror: bool = False,
        precision: str = "fp32",
    ) -> None:
        check_backend_inputs(batch_size, prepared, model.image_size)
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        param = next(iter(model.parameters()), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.prepared = prepared
        self.batch_size = int(batch_size)
        self.cache_slices = max(int(cache_slices or 4 * self.batch_size), 8, self.batch_size)
        self.multimask_output = bool(multimask_output)
        self.mirror = bool(mirror)
        self.precision = check_precision(precision, self.device)
        # keyed by (slice, mirrored)
        self._cache: OrderedDict[tuple[int, bool], torch.Tensor | ImageFeatures] = OrderedDict()
        self._transform: SliceTransform | None = None
        self.encoded = 0  # slices run through the image encoder (for tests and benchmarks)

    @property
    def transform(self) -> SliceTransform:
        if self._transform is None:
            _, self._transform = self.prepared.model_input(0)
        return self._transform

    def _views(self) -> tuple[bool, ...]:
        return (False, True) if self.mirror else (False,)

    def _model_input(self, index: int, mirrored: bool) -> tuple[torch.Tensor, SliceTransform]:
        if not mirrored:
            return self.prepared.model_input(index)
        s = np.ascontiguousarray(self.prepared.slice_image(index)[..., ::-1])  # C x H x W, columns reversed
        return prepare_slice(
            s[0] if s.shape[0] == 1 else np.moveaxis(s, 0, -1), self.prepared.record, (0.0, 1.0)
        )

    @torch.inference_mode()
    def prefetch(self, indices: Iterable[int]) -> None:
        """Encode the slices among ``indices`` that are not cached (and their mirror images with
        :attr:`mirror`), ``batch_size`` at a time."""
        keys = [(int(i), m) for i in indices for m in self._views()]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            images = []
            for i, m in chunk:
                x, tf = self._model_input(i, m)
                self._transform = self._transform or tf
                images.append(x)
            with autocast(self.precision, self.device):
                emb = self.model.encode_images(torch.stack(images).to(self.device))
            self.encoded += len(chunk)
            for key, e in zip(chunk, emb, strict=True):
                self._cache[key] = e
                self._cache.move_to_end(key)
        while len(self._cache) > self.cache_slices * len(self._views()):
            self._cache.popitem(last=False)

    def _probabilities(
        self, uniq: list[int], entries: list[tuple[int, Prompt]], mirrored: bool
    ) -> tuple[np.ndarray, torch.Tensor]:
        """``P x H x W`` probabilities (in the unmirrored slice's frame) and ``P`` predicted IoU of one view."""
        emb = stack_embeddings([self._cache[(i, mirrored)] for i in uniq])
        tf = self.transform
        width = tf.original_size[1]
        prompts = [
            InputPrompt.from_prompt(mirror_prompt(p, width) if mirrored else p, tf) for _, p in entries
        ]
        index = [uniq.index(int(i)) for i, _ in entries]
        with autocast(self.precision, self.device):
            logits, iou = self.model.decode_prompts(
                emb, prompts, index, multimask_output=self.multimask_output
            )
        logits, iou = to_float(logits), to_float(iou)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(entries), device=logits.device)
        probs = torch.sigmoid(logits_to_original(logits[rows, best], tf)).float().cpu().numpy()
        return (probs[..., ::-1] if mirrored else probs), iou[rows, best].float().cpu()

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
            entries = [items[n] for n in members]
            probs, score = self._probabilities(uniq, entries, False)
            if self.mirror:  # average the two views' probabilities and predicted IoU
                probs_m, score_m = self._probabilities(uniq, entries, True)
                probs = np.ascontiguousarray((probs + probs_m) / 2)
                score = (score + score_m) / 2
            for j, n in enumerate(members):
                prompt = items[n][1]
                if prompt.box is not None and prompt.box_bounds:  # as Predictor.predict
                    clip_probabilities_to_box(probs[j], prompt.box)
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
            pred = self.predictor.predict(prompt)  # clipped to a bounding box as the prompt says
            probs = pred.probabilities.astype(np.float32, copy=False)
            out.append(SliceOutput(probs, float(pred.score), stability_score(probs)))
        return out


def make_backend(
    model: Any,
    prepared: PreparedVolume,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    mirror: bool = False,
    precision: str = "fp32",
) -> Backend:
    """A backend for a :class:`SamModel`, a :class:`Predictor`, a model with its own backends (an object with
    ``backend_for(prepared, batch_size=...)``, e.g. :class:`salt_seg.inference.onnx_model.OnnxModel`) or an
    existing backend (returned as is). ``precision`` applies to a :class:`SamModel` (a predictor has its own).

    ``mirror`` (test-time mirroring, :class:`ModelBackend`) needs a model, or a predictor made with ``mirror=True``;
    the ONNX backends do not average views.
    """
    if hasattr(model, "prefetch") and hasattr(model, "decode") and hasattr(model, "prepared"):
        if model.prepared is not prepared:
            raise ValueError("the backend was made for another prepared volume")
        if mirror and not getattr(model, "mirror", False):
            raise ValueError("mirroring was asked for, but the given backend does not mirror")
        return model
    if isinstance(model, Predictor):
        if mirror and not model.mirror:
            raise ValueError(
                "mirroring was asked for, but the predictor does not mirror (Predictor(mirror=True))"
            )
        return PredictorBackend(model, prepared, batch_size=batch_size)
    if hasattr(model, "backend_for"):
        if mirror:
            raise ValueError("test-time mirroring runs on the PyTorch backend only")
        if precision != "fp32":
            raise ValueError(
                f"--precision {precision} applies to the PyTorch backend only; this model runs fp32"
            )
        return model.backend_for(prepared, batch_size=batch_size)
    if isinstance(model, SamModel) or hasattr(model, "decode_prompts"):
        return ModelBackend(
            model, prepared, device=device, batch_size=batch_size, mirror=mirror, precision=precision
        )
    raise TypeError(f"expected a SamModel, a Predictor or a backend, got {type(model).__name__}")
