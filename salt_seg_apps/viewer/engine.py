"""The viewer's models: an app-wide registry of loaded models and, per session, the engine that runs one on a volume.

Grids. The viewer shows and edits the volume's RAS grid (:meth:`salt_seg.data.volume.Volume.to_ras`). The engine
prepares the volume with the model's record (:func:`salt_seg.data.prepare_volume`) once and reuses the normalised
array for all three view axes (only ``record.axis`` differs), with in-plane resampling switched off
(``spacing=None``) so the prepared grid *is* the display grid: a click's display pixel is the model's slice pixel
and a mask lands voxel-exact in the label map. The engine checks this on construction.

Caching. Slice embeddings live in the session's :class:`~salt_seg.model.predictor.Predictor` under the keys
:class:`~salt_seg.inference.backend.PredictorBackend` uses (``(name, axis, index)``), so clicks, automatic
segmentation and propagation share them. A :class:`Prefetcher` thread embeds the viewed slice and its neighbours in
the background (outside the predictor lock, with :meth:`Predictor.compute_embedding`), nearest first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from salt_seg.data.pipeline import PreparedVolume, prepare_volume
from salt_seg.data.volume import Volume
from salt_seg.inference.backend import PredictorBackend, SliceOutput, slice_array
from salt_seg.inference.loading import LoadedModel
from salt_seg.model.builtin import BUILTINS
from salt_seg.model.predictor import MirroredEmbedding, Predictor
from salt_seg.preprocessing import Preprocessing
from salt_seg.prompts import Prompt

log = logging.getLogger(__name__)

#: name of the built-in base in the model menu.
BUILTIN_MODEL = f"built-in base ({BUILTINS['builtin'].variant}, {BUILTINS['builtin'].image_size} px)"


def guess_modality(volume: Volume) -> str:
    """``CT``, ``MR`` or ``image``: DICOM's modality, else CT when the values look like Hounsfield units.

    NIfTI has no modality field; a volume whose lowest values sit near air (-1000 HU) and that reaches beyond
    +300 is taken as CT, other volumes as MR (automatic window), 2-D pictures as plain images.
    """
    mod = str(volume.modality).upper()
    if mod in ("CT", "MR"):
        return mod
    if volume.is_2d or mod == "IMAGE" and volume.meta.get("format") == "picture":
        return "image"
    sample = np.asarray(volume.array[0][::4, ::4, ::2] if min(volume.shape) > 8 else volume.array[0])
    lo, hi = np.percentile(sample, [0.5, 99.9])
    return "CT" if lo <= -500 and hi >= 300 else "MR"


def base_record(modality: str, image_size: int) -> Preprocessing:
    """The record used with a base model: the one it was pretrained with, but with intensities of this volume
    mapped to ``[0, 1]`` by modality (CT soft-tissue window, MR percentiles, else min-max)."""
    from salt_seg.model.builtin import pretrain_record

    intensity = {"CT": "ct", "MR": "mr"}.get(modality, "minmax")
    return replace(pretrain_record(int(image_size)), intensity=intensity, classes={1: "object"})


def load_builtin(device: Any = "cpu") -> LoadedModel:
    """The shipped base model (:func:`salt_seg.inference.loading.load_base_for_prompts`), ``record=None``.

    The engine picks the record per volume (:func:`base_record`).

    Raises:
        FileNotFoundError: the package was installed without the base.
    """
    from salt_seg.inference.loading import load_base_for_prompts

    model, _ = load_base_for_prompts("builtin", device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, None, {}, {"base_checkpoint": "builtin"})  # type: ignore[arg-type]


def load_trained(path: str, device: Any = "cpu") -> LoadedModel:
    """A trained run directory or adapter file (:func:`salt_seg.inference.load_inference_model`, merged)."""
    from salt_seg.inference.loading import load_inference_model

    return load_inference_model(path, device=device)


def load_exported(path: str, threads: int | None = None) -> LoadedModel:
    """A folder ``salt-seg export-onnx`` wrote (or a run holding ``onnx/``), on ONNX Runtime
    (:func:`salt_seg.inference.onnx_model.load_onnx_model`): the engine runs it through
    :class:`~salt_seg.inference.onnx_model.OnnxPredictor`."""
    from salt_seg.inference.onnx_model import load_onnx_model

    return load_onnx_model(path, threads=threads)


def library_loaders(library: str, device: Any = "cpu") -> dict[str, Callable[[], LoadedModel]]:
    """Menu name (``library: NAME``) -> loader, for each entry of an adapter library (:mod:`salt_seg.library`).

    The entries share one :class:`~salt_seg.library.LibraryModels`: the base is read from disk once, and each
    entry gets its own copy of it with its adapter merged (sessions use models read-only and concurrently, so
    one model is not switched under them).

    Raises:
        ValueError: not a library index.
    """
    from salt_seg.library import Library, LibraryModels

    lib = Library.open(library)
    models = LibraryModels(lib, device)
    lock = threading.Lock()

    def loader(name: str) -> Callable[[], LoadedModel]:
        def load() -> LoadedModel:
            with lock:
                return models.load(name, copy=True)  # type: ignore[no-any-return]

        return load

    return {f"library: {name}": loader(name) for name in lib.entries()}


class ModelRegistry:
    """The models a viewer offers, loaded once on first use and shared read-only by all sessions.

    Args:
        loaders: menu name -> a function returning a :class:`~salt_seg.inference.loading.LoadedModel` (its
            ``record`` may be ``None`` for a base model: the engine then picks one by modality).
    """

    def __init__(self, loaders: dict[str, Callable[[], LoadedModel]]) -> None:
        if not loaders:
            raise ValueError("the viewer needs at least one model")
        self._loaders = dict(loaders)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self._loaders)

    def get(self, name: str) -> LoadedModel:
        """The loaded model (loads it on first use).

        Raises:
            ValueError: unknown name.
            FileNotFoundError: the model's files are missing.
        """
        if name not in self._loaders:
            raise ValueError(f"unknown model {name!r}; available: {self.names}")
        with self._lock:
            if name not in self._loaded:
                log.info("loading model %s", name)
                self._loaded[name] = self._loaders[name]()
            return self._loaded[name]


class SegmentationEngine:
    """One session's model on one volume: prepared slices per view axis, the predictor cache and prefetching.

    Args:
        loaded: the model (shared; only read here).
        volume: the volume as loaded (any orientation).
        display_shape: spatial shape of the viewer's RAS grid (checked against the prepared grid).
        modality: ``CT``/``MR``/``image`` (chooses the base model's intensity record).
        cache_size: slice embeddings kept (LRU).
        radius: slices on each side of the viewed one embedded in the background, after the viewed slice itself
            (0: no background embedding at all).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast of a PyTorch model (:class:`Predictor`); a model on ONNX
            Runtime (:class:`~salt_seg.inference.onnx_model.OnnxModel`) runs fp32 through
            :class:`~salt_seg.inference.onnx_model.OnnxPredictor`.
        mirror: test-time mirroring of every slice and prompt (twice the encoder time per slice).

    Raises:
        ValueError: the prepared grid differs from the display grid.
        DataError: the record's channels do not exist in the volume.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        volume: Volume,
        display_shape: tuple[int, int, int],
        *,
        modality: str = "image",
        cache_size: int = 48,
        radius: int = 3,
        precision: str = "fp32",
        mirror: bool = False,
    ) -> None:
        self.model = loaded.model
        record = loaded.record if loaded.record is not None else base_record(modality, self.model.image_size)
        if record.spacing is not None:
            log.warning(
                "the model's record resamples slices to %.3g mm; the viewer runs it on the native grid",
                record.spacing,
            )
        self.record = replace(record, spacing=None)
        self.trained = loaded.record is not None
        self.class_names = dict(loaded.class_names) if loaded.record is not None else {}
        first = prepare_volume(volume, replace(self.record, axis=2))
        if tuple(first.image.shape[1:]) != tuple(display_shape):
            raise ValueError(
                f"prepared grid {tuple(first.image.shape[1:])} differs from the display grid {display_shape}"
            )
        self._prepared: dict[int, PreparedVolume] = {2: first}
        self.predictor = _predictor(self.model, self.record, cache_size, precision, mirror)
        self.lock = threading.RLock()
        self.prefetcher = Prefetcher(self, radius)

    # --- grids and keys --------------------------------------------------------------------------------------
    def prepared(self, axis: int) -> PreparedVolume:
        """The prepared volume sliced along ``axis`` (shares the normalised array with the other axes)."""
        if axis not in self._prepared:
            base = self._prepared[2]
            self._prepared[axis] = replace(base, record=replace(self.record, axis=int(axis)))
        return self._prepared[axis]

    def key(self, axis: int, index: int) -> Hashable:
        """The predictor cache key of a slice (the one :class:`PredictorBackend` uses)."""
        p = self.prepared(axis)
        return (p.name, p.axis, int(index))

    def is_cached(self, axis: int, index: int) -> bool:
        with self.lock:
            return self.predictor.is_cached(self.key(axis, index))

    @property
    def tokens_only(self) -> bool:
        """A trained run whose decoder learned class tokens only (``prompt_mode: auto``): its answer to a point or
        a box is whatever its tokens learned, often the whole structure."""
        return self.trained and self.record.prompt_mode == "auto"

    @property
    def token_classes(self) -> list[int]:
        """Class ids the model has learned tokens for (automatic segmentation)."""
        n = int(getattr(self.model, "num_classes", 0) or 0)
        return [c for c in sorted(self.class_names) if 1 <= c <= n]

    # --- embeddings --------------------------------------------------------------------------------------------
    def compute(self, axis: int, index: int) -> tuple[Any, Any]:
        """Embed a slice without the lock (background thread)."""
        return self.predictor.compute_embedding(slice_array(self.prepared(axis), index), (0.0, 1.0))

    def store(self, axis: int, index: int, embedding: Any, transform: Any) -> None:
        with self.lock:
            key = self.key(axis, index)
            if not self.predictor.is_cached(key):
                self.predictor.add_embedding(key, embedding, transform)

    def ensure(self, axis: int, index: int) -> None:
        """Make sure a slice is embedded, waiting for the prefetcher when it is embedding that very slice."""
        self.prefetcher.wait_for((axis, index))
        if not self.is_cached(axis, index):
            emb, tf = self.compute(axis, index)
            self.store(axis, index, emb, tf)

    def request_prefetch(self, axis: int, index: int) -> None:
        """Embed slice ``index`` and its neighbours along ``axis`` in the background, nearest first."""
        self.prefetcher.request(axis, index, self.prepared(axis).n_slices)

    # --- decoding ------------------------------------------------------------------------------------------------
    def decode(self, axis: int, items: Sequence[tuple[int, Prompt]]) -> list[SliceOutput]:
        """Probabilities (display pixels) and predicted IoU for ``(slice index, prompt)`` pairs along ``axis``."""
        for index in dict.fromkeys(int(i) for i, _ in items):
            self.ensure(axis, index)
        with self.lock:
            return PredictorBackend(self.predictor, self.prepared(axis)).decode(list(items))

    def backend(self, axis: int) -> PredictorBackend:
        """A library backend on this engine's predictor (hold :attr:`lock` while it runs)."""
        return PredictorBackend(self.predictor, self.prepared(axis))

    def held_arrays(self) -> list[Any]:
        """The large arrays this engine holds: the prepared volume and the cached slice embeddings (memory budget)."""
        with self.lock:
            prepared = [p.image for p in self._prepared.values()]
            cached = [
                emb for emb, _ in self.predictor._cache.values()
            ]  # the predictor has no public view of it
        # a mirroring predictor caches two views per slice; an ONNX Runtime predictor a tuple of arrays per view
        views = [
            v
            for emb in cached
            for v in ((emb.plain, emb.mirrored) if isinstance(emb, MirroredEmbedding) else (emb,))
        ]
        return prepared + [a for emb in views for a in (emb if isinstance(emb, tuple) else (emb,))]

    def close(self) -> None:
        """Stop prefetching and drop the cached embeddings."""
        self.prefetcher.close()
        with self.lock:
            self.predictor.clear()
        self._prepared.clear()


def _predictor(
    model: Any, record: Preprocessing, cache_size: int, precision: str, mirror: bool = False
) -> Predictor:
    """The session's predictor: PyTorch's (on the model's device, at ``precision``) or ONNX Runtime's; with
    ``mirror``, test-time mirroring (:class:`~salt_seg.model.predictor.Predictor`)."""
    from salt_seg.inference.onnx_model import OnnxModel, OnnxPredictor

    if isinstance(model, OnnxModel):
        if precision != "fp32":
            raise ValueError(f"--precision {precision}: the onnx backend runs fp32; use --backend torch")
        predictor = OnnxPredictor(model, cache_size=cache_size, mirror=mirror)
        predictor.record = record  # the engine's (native in-plane grid), as the PyTorch predictor gets it
        return predictor
    param = next(iter(model.parameters()))
    return Predictor(
        model, record, device=param.device, cache_size=cache_size, precision=precision, mirror=mirror
    )


class Prefetcher:
    """A background thread that embeds the slices around the viewed one.

    :meth:`request` replaces the wish list (so scrolling away drops stale work); the thread embeds one slice at
    a time outside the engine's lock and stores it under the lock.
    """

    def __init__(self, engine: SegmentationEngine, radius: int) -> None:
        self.engine = engine
        self.radius = max(0, int(radius))
        self.computed = 0
        self._wanted: list[tuple[int, int]] = []
        self._in_flight: tuple[int, int] | None = None
        self._closed = False
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def request(self, axis: int, index: int, n_slices: int) -> None:
        if self.radius == 0:  # no background embedding at all
            return
        order = [int(index)]
        for d in range(1, self.radius + 1):
            order += [i for i in (index + d, index - d) if 0 <= i < n_slices]
        with self._cv:
            if self._closed:
                return
            self._wanted = [(int(axis), i) for i in order]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="viewer-prefetch", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._wanted:
                    self._cv.wait()
                if self._closed:
                    return
                axis, index = self._wanted.pop(0)
                if self.engine.is_cached(axis, index):
                    self._cv.notify_all()  # wait_idle() may be waiting for the list to empty
                    continue
                self._in_flight = (axis, index)
            try:
                emb, tf = self.engine.compute(axis, index)
                self.engine.store(axis, index, emb, tf)
                self.computed += 1
            except Exception:  # noqa: BLE001 - a failed prefetch must never kill the session; the click retries
                log.exception("background embedding of slice %s failed", (axis, index))
            finally:
                with self._cv:
                    self._in_flight = None
                    self._cv.notify_all()

    def wait_for(self, item: tuple[int, int], timeout: float = 60.0) -> None:
        """Block while the thread is embedding ``item`` (so a click does not embed it a second time)."""
        with self._cv:
            self._cv.wait_for(lambda: self._in_flight != item, timeout=timeout)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the wish list is done (tests, benchmarks); returns ``False`` on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._wanted and self._in_flight is None, timeout=timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._wanted = []
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30.0)
