"""ONNX export of a merged model and inference on ONNX Runtime (``salt-seg export-onnx``, ``--backend onnx``).

Two graphs, as segment-anything's own export splits SAM (``segment_anything/utils/onnx.py``): the image encoder,
run once per slice, and the prompt encoder + mask decoder, run per prompt against one slice's features.

``encoder.onnx``
    ``images`` ``B x 3 x S x S`` (the preprocessed slices, dynamic ``B``) -> ``image_embeddings``
    ``B x D x S/16 x S/16``; with the full-resolution branch also ``early_features`` (``B x c x S/4 x S/4``),
    ``stem_features`` (``B x c/2 x S x S``) and ``half_features`` (``B x c x S/2 x S/2``) -- the
    :class:`~salt_seg.model.hires.ImageFeatures` of the PyTorch model.

``decoder.onnx``
    one slice's features (batch 1) and ``P`` prompts, each a row of ``point_coords`` ``P x N x 2`` (model-input
    pixels) and ``point_labels`` ``P x N`` -> ``masks`` ``P x 1 x s x s`` logits and ``iou_predictions``
    ``P x 1``. Prompts are points as segment-anything encodes them: labels 1 (positive) and 0 (negative); a box is
    its two corners with labels 2 and 3; a prompt without a box ends with the padding point ``(0, 0)`` of label
    -1. salt_seg adds one kind: label ``4 + k`` is the learned class token of class ``k + 1`` (automatic mode; its
    coordinates are ignored), so one graph serves every prompt mode. Dynamic ``P`` and ``N``; prompts of one call
    share ``N`` (:class:`OnnxBackend` groups them). The single-mask output only (SAM's multimask candidates are
    not exported).

``salt_seg_onnx.json``
    the preprocessing record, class names, input size, which outputs exist, and the largest differences to
    PyTorch measured at export.

The adapter is merged into the weights before the export (:func:`~salt_seg.inference.loading.load_inference_model`),
so the graphs are plain SAM. Mask post-processing (crop, resize to the slice, sigmoid) stays in PyTorch, shared with
:class:`~salt_seg.inference.backend.ModelBackend`. onnx and onnxruntime are an optional extra:
``pip install salt-seg[onnx]``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from salt_seg.configio import from_dict
from salt_seg.data.pipeline import PreparedVolume
from salt_seg.inference.backend import SliceOutput, check_backend_inputs, stability_score
from salt_seg.inference.loading import LoadedModel
from salt_seg.io import atomic_folder, atomic_write_json
from salt_seg.model.hires import ImageFeatures
from salt_seg.model.predictor import Predictor, clip_probabilities_to_box
from salt_seg.model.sam import InputPrompt, SamModel
from salt_seg.preprocessing import Preprocessing, SliceTransform, logits_to_original, prepare_slice
from salt_seg.prompts import Prompt

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "salt_seg_onnx.json"
FORMAT_VERSION = 1
OPSET = 17
#: point label of the first class token (label ``CLASS_LABEL + k`` = class ``k + 1``)
CLASS_LABEL = 4
HIRES_OUTPUTS = ("early_features", "stem_features", "half_features")
INSTALL_HINT = "the onnx backend needs onnx and onnxruntime: pip install 'salt-seg[onnx]'"


def _require_ort():  # -> module onnxruntime
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return onnxruntime


# --- the graphs' PyTorch side -----------------------------------------------------------------------------------
class _EncoderGraph(nn.Module):
    """``images`` -> the embedding (and the full-resolution branch's per-image features)."""

    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the branch's plain (autograd-mode) formulation traces to standard ops; no parameter needs a gradient
        with torch.enable_grad():
            out = self.model.encode_images(images)
        if isinstance(out, ImageFeatures):
            return out.embedding, out.early, out.stem, out.half  # type: ignore[return-value]
        return (out,)


class _DecoderGraph(nn.Module):
    """One slice's features and ``P`` prompts as labelled points -> ``P`` single-mask logits and IoU."""

    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM's sparse prompt embedding of labelled points (SamModel's prompt encoder, without control flow)."""
        pe_layer = self.model.prompt_encoder
        size = float(self.model.image_size)
        emb = pe_layer.pe_layer._pe_encoding((coords + 0.5) / size)  # P x N x D
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, pe_layer.not_a_point_embed.weight, emb)
        for i in range(pe_layer.num_point_embeddings):
            emb = emb + pe_layer.point_embeddings[i].weight * (lab == i)
        tokens = self.model.class_tokens
        if tokens is not None:
            index = (labels - CLASS_LABEL).clamp(0, tokens.num_embeddings - 1)
            emb = torch.where(lab >= CLASS_LABEL, tokens.weight[index], emb)
        return emb

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *features, coords, labels = inputs
        sparse = self.embed_points(coords, labels)
        n = coords.shape[0]
        rows = [f.expand(n, *f.shape[1:]) for f in features]
        emb: torch.Tensor | ImageFeatures = ImageFeatures(*rows) if len(rows) > 1 else rows[0]
        with torch.enable_grad():  # the branch's plain formulation (see _EncoderGraph)
            return self.model.decode(emb, sparse, multimask_output=False)


# --- prompts as labelled points ---------------------------------------------------------------------------------
def prompt_points(prompt: InputPrompt, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A prompt in model-input pixels as ``N x 2`` float32 coordinates and ``N`` int64 labels (module docstring).

    Raises:
        ValueError: a class-token prompt on a model without class tokens, or a class id out of range.
    """
    if prompt.is_automatic:
        if num_classes <= 0:
            raise ValueError(
                "prompt-free (automatic) prompts need a model with class tokens (num_classes > 0)"
            )
        if not 1 <= prompt.class_id <= num_classes:
            raise ValueError(f"class id out of range 1..{num_classes}: {[prompt.class_id]}")
        return np.zeros((1, 2), np.float32), np.array([CLASS_LABEL + prompt.class_id - 1], np.int64)
    coords, labels = [], []
    if prompt.points is not None:
        coords.append(prompt.points.detach().cpu().numpy().reshape(-1, 2))
        labels.append(prompt.labels.detach().cpu().numpy().reshape(-1))  # type: ignore[union-attr]
    if prompt.box is not None:
        coords.append(prompt.box.detach().cpu().numpy().reshape(2, 2))
        labels.append(np.array([2, 3]))
    else:  # segment-anything pads point prompts without a box with a "not a point"
        coords.append(np.zeros((1, 2)))
        labels.append(np.array([-1]))
    return np.concatenate(coords).astype(np.float32), np.concatenate(labels).astype(np.int64)


# --- export -----------------------------------------------------------------------------------------------------
def _example_prompts(model: SamModel) -> list[InputPrompt]:
    s = float(model.image_size)
    prompts = [
        InputPrompt(points=torch.tensor([[0.4 * s, 0.5 * s]]), labels=torch.tensor([1])),
        InputPrompt(box=torch.tensor([0.2 * s, 0.25 * s, 0.7 * s, 0.8 * s])),
        InputPrompt(
            points=torch.tensor([[0.5 * s, 0.5 * s], [0.1 * s, 0.9 * s]]),
            labels=torch.tensor([1, 0]),
            box=torch.tensor([0.3 * s, 0.3 * s, 0.6 * s, 0.7 * s]),
        ),
    ]
    prompts += [InputPrompt(class_id=c) for c in range(1, model.num_classes + 1)]
    return prompts


def _example_images(model: SamModel, n: int = 2) -> torch.Tensor:
    """Smooth, image-like inputs (blobs on a gradient) at SAM's input statistics, deterministic."""
    s = model.image_size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    out = []
    for k in range(n):
        blob = torch.exp(-(((xx - 0.3 * k + 0.2) ** 2 + (yy + 0.1 * k) ** 2) / 0.08))
        img = 0.6 * blob + 0.3 * (xx + 1) / 2
        out.append(((img - 0.45) / 0.25).expand(3, s, s))
    return torch.stack(out).contiguous()


def export_onnx(loaded: LoadedModel, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Export a loaded (merged) model to ``out_dir`` and check it against PyTorch on ONNX Runtime.

    Writes :data:`ENCODER_FILE`, :data:`DECODER_FILE` and :data:`META_FILE` (each published atomically; other
    files in ``out_dir`` are kept). Returns the metadata written.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is off.
        ValueError: onnx/onnxruntime missing, or an unmerged model (adapter wrappers would be exported as is).
    """

    ort = _require_ort()
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    model, record, class_names, meta = loaded
    if not meta.get("merged", True):
        raise ValueError("export a merged model (load_inference_model(..., merge=True))")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out must be a folder")
    if not overwrite:
        for name in (ENCODER_FILE, DECODER_FILE, META_FILE):
            if (out / name).exists():
                raise FileExistsError(f"{out / name}: exists; pass --force to replace it")
    model = model.cpu().eval()
    hires = model.hires is not None
    enc_outputs = ["image_embeddings", *(HIRES_OUTPUTS if hires else ())]
    images = _example_images(model)
    encoder, decoder = _EncoderGraph(model), _DecoderGraph(model)
    with torch.no_grad():
        feats = encoder(images)
    one = [f[:1] for f in feats]
    prompts = _example_prompts(model)
    coords, labels = prompt_points(prompts[0], model.num_classes)
    dec_args = (*one, torch.from_numpy(coords)[None], torch.from_numpy(labels)[None])
    dec_inputs = [*enc_outputs, "point_coords", "point_labels"]
    with atomic_folder(out, merge=True) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            encoder,
            (images,),
            str(tmp / ENCODER_FILE),
            input_names=["images"],
            output_names=enc_outputs,
            dynamic_axes={name: {0: "batch"} for name in ["images", *enc_outputs]},
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            decoder,
            dec_args,
            str(tmp / DECODER_FILE),
            input_names=dec_inputs,
            output_names=["masks", "iou_predictions"],
            dynamic_axes={
                "point_coords": {0: "prompts", 1: "points"},
                "point_labels": {0: "prompts", 1: "points"},
                "masks": {0: "prompts"},
                "iou_predictions": {0: "prompts"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        info = {
            "format_version": FORMAT_VERSION,
            "image_size": model.image_size,
            "output_size": model.output_size,
            "variant": model.variant,
            "num_classes": model.num_classes,
            "hires": hires,
            "encoder_outputs": enc_outputs,
            "decoder_inputs": dec_inputs,
            "class_label": CLASS_LABEL,
            "class_names": {str(k): v for k, v in class_names.items()},
            "preprocessing": record.to_dict(),
            "source": {
                "adapter": meta.get("adapter_path"),
                "base_checkpoint": meta.get("base_checkpoint"),
                "torch": torch.__version__,
                "onnxruntime": ort.__version__,
                "opset": OPSET,
            },
        }
        atomic_write_json(tmp / META_FILE, info)  # the check below reads the folder as load_onnx_model does
        info["check"] = _check_export(OnnxModel(tmp, threads=1), model, images, prompts)
        atomic_write_json(tmp / META_FILE, info)
    log.info("exported %s: %s", out, info["check"])
    return info


@torch.inference_mode()
def _check_export(onnx_model: OnnxModel, model: SamModel, images: torch.Tensor, prompts: list[InputPrompt]):
    """Largest differences between ONNX Runtime and PyTorch's own inference path on the example inputs."""
    feats = model.encode_images(images)
    ort_feats = onnx_model.encode(images.numpy())
    emb = feats.embedding if isinstance(feats, ImageFeatures) else feats
    d_emb = float(np.abs(ort_feats[0][0] - emb[0:1].numpy()).max())
    d_logit = d_prob = 0.0
    for row in range(images.shape[0]):
        ref, _ = model.decode_prompts(feats[row : row + 1], prompts, [0] * len(prompts))
        for j, p in enumerate(prompts):
            coords, labels = prompt_points(p, model.num_classes)
            got, _ = onnx_model.decode(ort_feats[row], coords[None], labels[None])
            r = ref[j, 0].numpy()
            d_logit = max(d_logit, float(np.abs(got[0, 0] - r).max()))
            d_prob = max(d_prob, float(np.abs(_sigmoid(got[0, 0]) - _sigmoid(r)).max()))
    return {"max_abs_embedding": d_emb, "max_abs_logit": d_logit, "max_abs_probability": d_prob}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# --- runtime ----------------------------------------------------------------------------------------------------
class OnnxModel:
    """An exported folder on ONNX Runtime (CPU): the encoder and decoder sessions and the export's metadata.

    Args:
        folder: what :func:`export_onnx` wrote.
        threads: intra-op threads of each session (default: torch's thread count, which ``--threads`` sets).

    Raises:
        FileNotFoundError: not an export folder.
        ValueError: onnxruntime missing, or an export of another format version.
    """

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        ort = _require_ort()
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.folder}: no {META_FILE}; export the run first: salt-seg export-onnx RUN --out DIR"
            )
        self.info: dict[str, Any] = json.loads(meta_path.read_text())
        if int(self.info.get("format_version", 0)) != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: ONNX export format {self.info.get('format_version')}, this salt_seg reads "
                f"{FORMAT_VERSION}; export again"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.folder / ENCODER_FILE), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(self.folder / DECODER_FILE), opts, providers=providers)
        self.image_size = int(self.info["image_size"])
        self.output_size = int(self.info["output_size"])
        self.num_classes = int(self.info["num_classes"])
        self.hires = bool(self.info["hires"])
        self.variant = str(self.info.get("variant", ""))
        self.record = from_dict(Preprocessing, self.info["preprocessing"])
        self.class_names = {int(k): str(v) for k, v in self.info["class_names"].items()}
        self._enc_outputs = list(self.info["encoder_outputs"])
        self._dec_inputs = list(self.info["decoder_inputs"])

    def encode(self, images: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """``B x 3 x S x S`` float32 model input -> per image, its features (each with a batch axis of 1)."""
        outs = self.encoder.run(self._enc_outputs, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return [tuple(o[i : i + 1] for o in outs) for i in range(images.shape[0])]

    def decode(
        self, features: tuple[np.ndarray, ...], coords: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One slice's features and ``P x N`` labelled points -> ``P x 1 x s x s`` logits, ``P x 1`` IoU."""
        feed = dict(zip(self._dec_inputs, features, strict=False))
        feed["point_coords"] = np.ascontiguousarray(coords, dtype=np.float32)
        feed["point_labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        masks, iou = self.decoder.run(["masks", "iou_predictions"], feed)
        return masks, iou

    def decode_prompts(
        self, features: tuple[np.ndarray, ...], prompts: Sequence[InputPrompt]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prompts of any kinds on one slice: grouped by point count, decoded, reassembled in order."""
        groups: dict[int, list[int]] = defaultdict(list)
        encoded = [prompt_points(p, self.num_classes) for p in prompts]
        for i, (c, _) in enumerate(encoded):
            groups[c.shape[0]].append(i)
        masks: list[np.ndarray | None] = [None] * len(prompts)
        ious: list[np.ndarray | None] = [None] * len(prompts)
        for members in groups.values():
            coords = np.stack([encoded[i][0] for i in members])
            labels = np.stack([encoded[i][1] for i in members])
            m, s = self.decode(features, coords, labels)
            for j, i in enumerate(members):
                masks[i], ious[i] = m[j], s[j]
        return np.stack(masks), np.stack(ious)  # type: ignore[arg-type]

    def backend_for(self, prepared: PreparedVolume, *, batch_size: int = 8) -> OnnxBackend:
        return OnnxBackend(self, prepared, batch_size=batch_size)


def _outputs(
    masks: np.ndarray, ious: np.ndarray, tf: SliceTransform
) -> tuple[torch.Tensor, list[float], np.ndarray]:
    """Logits in model-input space -> the original-size logits, scores and probabilities (as ModelBackend)."""
    low = torch.from_numpy(masks[:, 0])
    full = logits_to_original(low, tf)
    return full, [float(v) for v in ious[:, 0]], torch.sigmoid(full).float().numpy()


class OnnxBackend:
    """:class:`~salt_seg.inference.backend.ModelBackend`'s interface (batched, cached encoding; decoding of
    ``(slice, prompt)`` pairs) on an :class:`OnnxModel`."""

    def __init__(
        self,
        model: OnnxModel,
        prepared: PreparedVolume,
        *,
        batch_size: int = 8,
        cache_slices: int | None = None,
    ) -> None:
        check_backend_inputs(batch_size, prepared, model.image_size)
        self.model = model
        self.prepared = prepared
        self.batch_size = int(batch_size)
        self.cache_slices = max(int(cache_slices or 4 * self.batch_size), 8, self.batch_size)
        self._cache: OrderedDict[int, tuple[np.ndarray, ...]] = OrderedDict()
        self._transform: SliceTransform | None = None
        self.encoded = 0

    @property
    def transform(self) -> SliceTransform:
        if self._transform is None:
            _, self._transform = self.prepared.model_input(0)
        return self._transform

    def prefetch(self, indices: Iterable[int]) -> None:
        """Encode the slices among ``indices`` that are not cached, ``batch_size`` at a time."""
        todo = list(dict.fromkeys(int(i) for i in indices if int(i) not in self._cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            images = []
            for i in chunk:
                x, tf = self.prepared.model_input(i)
                self._transform = self._transform or tf
                images.append(x.numpy())
            feats = self.model.encode(np.stack(images))
            self.encoded += len(chunk)
            for i, f in zip(chunk, feats, strict=True):
                self._cache[i] = f
                self._cache.move_to_end(i)
        while len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)

    def decode(self, items: Sequence[tuple[int, Prompt]]) -> list[SliceOutput]:
        """Probabilities and predicted IoU for each ``(slice index, prompt)`` (prompt in slice pixels)."""
        step = max(1, self.cache_slices // 2)
        order = list(dict.fromkeys(int(i) for i, _ in items))
        results: dict[int, SliceOutput] = {}
        for s in range(0, len(order), step):
            group = order[s : s + step]
            self.prefetch(sorted(group))
            tf = self.transform
            for index in group:
                members = [n for n, (i, _) in enumerate(items) if int(i) == index]
                prompts = [InputPrompt.from_prompt(items[n][1], tf) for n in members]
                masks, ious = self.model.decode_prompts(self._cache[index], prompts)
                _, scores, probs = _outputs(masks, ious, tf)
                for j, n in enumerate(members):
                    prompt = items[n][1]
                    if prompt.box is not None and prompt.box_bounds:  # as ModelBackend
                        clip_probabilities_to_box(probs[j], prompt.box)
                    results[n] = SliceOutput(probs[j], scores[j], stability_score(probs[j]))
        return [results[n] for n in range(len(items))]


class OnnxPredictor(Predictor):
    """:class:`~salt_seg.model.predictor.Predictor` (one slice at a time, LRU embedding cache, clicks) on an
    :class:`OnnxModel`: what the viewer needs to offer ``--backend onnx`` (``set_image``, ``compute_embedding``,
    ``add_embedding``, ``is_cached``, ``clear``, ``predict``). Cached "embeddings" are tuples of numpy arrays."""

    def __init__(
        self, model: OnnxModel, cache_size: int = 16, threshold: float = 0.0, mirror: bool = False
    ) -> None:
        self.model = model  # type: ignore[assignment]
        self.record = model.record
        self.device = torch.device("cpu")
        self.cache_size = int(cache_size)
        self.threshold = float(threshold)
        self.precision = "fp32"
        self.mirror = bool(mirror)
        self._cache: OrderedDict[Hashable, tuple[Any, SliceTransform]] = OrderedDict()
        self._current: Hashable | None = None

    def _encode(
        self, slice_2d: np.ndarray, value_range: tuple[float, float] | None
    ) -> tuple[Any, SliceTransform]:
        image, tf = prepare_slice(np.ascontiguousarray(slice_2d), self.record, value_range)
        return cast(Any, self.model).encode(image[None].numpy())[0], tf

    def _decode(
        self, embedding: Any, prompt: InputPrompt, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if multimask_output:
            raise ValueError(
                "the ONNX export has the single-mask output only; use the torch backend for multimask"
            )
        masks, iou = cast(Any, self.model).decode_prompts(embedding, [prompt])
        return torch.from_numpy(masks), torch.from_numpy(iou)


def load_onnx_model(path: str | Path, threads: int | None = None) -> LoadedModel:
    """An export folder (or a run directory holding ``onnx/``) as a :class:`LoadedModel` whose ``model`` is an
    :class:`OnnxModel` (``segment_volume`` and ``predict_cases`` take it like a SamModel).

    Raises:
        FileNotFoundError: neither an export folder nor a run directory with one.
        ValueError: onnxruntime missing.
    """
    _require_ort()
    folder = Path(path)
    if not (folder / META_FILE).is_file() and (folder / "onnx" / META_FILE).is_file():
        folder = folder / "onnx"
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(
            f"{path}: not an ONNX export (no {META_FILE}); export it first: salt-seg export-onnx RUN --out DIR"
        )
    model = OnnxModel(folder, threads=threads)
    meta = {"adapter_path": str(folder), "backend": "onnx", "export": model.info}
    return LoadedModel(model, model.record, dict(model.class_names), meta)  # type: ignore[arg-type]
