"""One browser tab's viewer: the volume, the view, the label map, and the editing actions on them.

:class:`ViewerSession` is a plain class (no Gradio, no ``nn.Module``): the Gradio handlers in
:mod:`salt_seg_apps.viewer.handlers` translate events into its methods, and tests call them directly.

The label map lives on the volume's RAS grid (``I x J x K`` uint16), the grid the viewer slices; it is mapped back
to the file's own voxel grid only on export (:func:`salt_seg_apps.viewer.actions.export`). Every change of labels, prompts or
label names happens inside :meth:`ViewerSession.action`, which records the previous contents of only the slices it
touched; the session keeps one undo stack of such actions (:class:`~salt_seg_apps.viewer.state.UndoStack`, capped in memory),
so Undo takes back the last action whatever its scope: a click, a brush stroke, automatic segmentation of the whole
volume, a propagation or a loaded label map.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.volume import Volume, extract_slice, insert_slice, slice_shape
from salt_seg.inference.segment import InferenceSettings
from salt_seg.inference.summary import voxel_volume_mm3
from salt_seg.preprocessing import Preprocessing, intensity_range, window_preset
from salt_seg.prompts import Prompt, box_from_points
from salt_seg_apps.viewer.brush import stroke_mask
from salt_seg_apps.viewer.engine import BUILTIN_MODEL, ModelRegistry, SegmentationEngine, guess_modality
from salt_seg_apps.viewer.render import (
    DisplayGeometry,
    edge_letters,
    markers_for,
    render_slice,
    window_to_uint8,
)
from salt_seg_apps.viewer.state import Action, LabelSet, PromptBook, UndoStack, VoxelCounts

log = logging.getLogger(__name__)

AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}
#: interaction tools: what a click on the image does.
TOOLS = ("positive point", "negative point", "box", "brush", "eraser", "inspect")
#: window presets offered (``auto``: 0.5-99.5 percentiles, the MR default).
PRESETS = ("auto", *("soft_tissue", "lung", "bone", "brain"))

Progress = Callable[[float, str], None]
#: the dark band around the drawn slice that holds the orientation letters (pixels).
LETTER_MARGIN = 20


def nice(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (window boxes show ``4234``, not ``4234.1049``)."""
    return float(f"{float(value):.{digits}g}")


class ViewerSession:
    """The state and actions of one viewer tab.

    Args:
        registry: the models offered (shared by all sessions).
        workdir: this session's private folder (uploads, exports); removed by :meth:`close`.
        model_name: the model selected at start (default: the registry's first).
        display_size: longest side of the drawn slice in pixels.
        cache_size: slice embeddings kept per session.
        radius: neighbouring slices embedded in the background on each side.
        settings: thresholds for automatic segmentation and propagation (the library's calibrated defaults).
        precision: ``fp32``, ``bf16`` or ``fp16`` inference of the session's PyTorch models.
        mirror: test-time mirroring of slices and prompts (``salt-seg app --mirror``).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        workdir: str | Path,
        *,
        model_name: str | None = None,
        display_size: int = 512,
        cache_size: int = 48,
        radius: int = 3,
        settings: InferenceSettings | None = None,
        precision: str = "fp32",
        mirror: bool = False,
    ) -> None:
        self.registry = registry
        self.precision = str(precision)
        self.mirror = bool(mirror)
        self.model_name = model_name or registry.names[0]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.display_size = int(display_size)
        self.cache_size, self.radius = int(cache_size), int(radius)
        self.settings = settings or InferenceSettings()
        self.volume: Volume | None = None
        self.ras: Volume | None = None
        self.labels: np.ndarray | None = None
        self.source_path: Path | None = None
        self.dicom_source: Path | None = None  # the DICOM series folder (or file) the volume was read from
        self.modality = "image"
        self.axcodes = "RAS"
        self.axis = 2
        self.index = {0: 0, 1: 0, 2: 0}
        self.level, self.width, self.preset = 0.0, 1.0, "auto"
        self.opacity = 0.5
        self.tool = TOOLS[0]
        self.brush_radius = 3
        self.label_set = LabelSet()
        self.undo_stack = UndoStack()
        self._action: Action | None = None  # the action being recorded (see action)
        self.unsaved = False  # labels changed since open, load or export (replacing the volume asks first)
        self.prompts = PromptBook()
        self.engine: SegmentationEngine | None = None  # the chosen model (class tokens)
        self.prompt_engine: SegmentationEngine | None = (
            None  # what answers points and boxes (see model_roles)
        )
        self.pending: Any = None  # (staged upload, series) waiting for the user to discard unsaved labels
        self.engine_error: str | None = None
        self.cursor = ""
        self.staged: Any = None  # an upload waiting for the user's series choice (handlers)
        self.upload_name = ""  # the user's name for the latest upload (messages never show server paths)
        self.shared_volume = False  # the volume is the app's, shared by several sessions (see open)
        self.lock = threading.RLock()  # the app serialises a tab's events with it
        self.counts = VoxelCounts()  # voxels per label id, kept up to date on every write

    # --- volume ------------------------------------------------------------------------------------------------
    def open(
        self,
        volume: Volume,
        source_path: str | Path | None = None,
        *,
        shared: bool = False,
        dicom_source: str | Path | None = None,
    ) -> None:
        """Show a freshly loaded volume: RAS grid, empty label map, middle slices, a window for its modality.

        The model engine is (re)built for it; a model that fails to load leaves the viewer usable without one
        (:attr:`engine_error` says why). ``shared``: the volume is the app's, read by several sessions (the
        command-line ``PATH``); :meth:`nbytes` leaves it out. ``dicom_source``: the folder (or file) a DICOM
        volume was read from, kept for DICOM-SEG and RTSTRUCT export (:func:`salt_seg_apps.viewer.actions.export`).
        """
        self._drop_engine()
        self.volume = volume
        self.shared_volume = bool(shared)
        is_dicom = volume.meta.get("format") == "dicom" and dicom_source is not None
        self.dicom_source = Path(dicom_source) if is_dicom else None  # type: ignore[arg-type]
        self.ras = volume.to_ras()
        self.source_path = Path(source_path) if source_path is not None else None
        self.modality = guess_modality(volume)
        self.axcodes = self.ras.axcodes
        self.labels = np.zeros(self.ras.shape, dtype=np.uint16)
        self.counts = VoxelCounts(self.labels)
        self.axis = 2
        self.index = {a: n // 2 for a, n in enumerate(self.ras.shape)}
        self.undo_stack.clear()
        self.unsaved = False
        self.prompts.clear()
        self.label_set = LabelSet()
        self.cursor = ""
        self.set_preset("soft_tissue" if self.modality == "CT" else "auto")
        self._build_engine()

    def _make_engine(self, name: str) -> SegmentationEngine:
        assert self.volume is not None and self.ras is not None
        return SegmentationEngine(
            self.registry.get(name),
            self.volume,
            self.ras.shape,
            modality=self.modality,
            cache_size=self.cache_size,
            radius=self.radius,
            precision=self.precision if self._runs_torch(name) else "fp32",
            mirror=self.mirror,
        )

    def _runs_torch(self, name: str) -> bool:
        """Whether the model ``name`` runs on PyTorch (a model on ONNX Runtime runs fp32)."""
        from salt_seg.inference.onnx_model import OnnxModel

        return not isinstance(self.registry.get(name).model, OnnxModel)

    def _build_engine(self) -> None:
        self.engine, self.prompt_engine, self.engine_error = None, None, None
        if self.volume is None or self.ras is None:
            return
        try:
            self.engine = self._make_engine(self.model_name)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            self.engine_error = f"model {self.model_name!r} is not available: {exc}"
            log.warning("%s", self.engine_error)
            return
        self.prompt_engine = self.engine
        if self.engine.tokens_only and BUILTIN_MODEL in self.registry.names:
            # a run trained on class tokens only answers a point with the whole structure its token learned;
            # SAM's own prompt decoder (the built-in base) answers points and boxes instead
            try:
                self.prompt_engine = self._make_engine(BUILTIN_MODEL)
            except (ValueError, FileNotFoundError, RuntimeError) as exc:
                log.warning("the built-in base is not available for points and boxes: %s", exc)
        if self.engine.class_names:
            names = {**self.engine.class_names}
            self.label_set = LabelSet({**names, **self.label_set.names} if self._labels_used() else names)
        self._prefetch()

    def model_roles(self) -> str:
        """One line: which model answers points and boxes, and which class tokens (automatic segmentation)."""
        if self.engine is None:
            if self.engine_error:
                return f"⚠️ {self.engine_error}"
            return f"{self.model_name}: loads when a volume opens"
        tokens = self.engine.token_classes
        token_part = (
            f"class tokens (Auto): {self.model_name}, {len(tokens)} class(es)"
            if tokens
            else "class tokens (Auto): none (a base model has none; give a trained run)"
        )
        if self.prompt_engine is not self.engine:
            return f"points/boxes: {BUILTIN_MODEL} (SAM's prompt decoder) · {token_part}"
        if self.engine.tokens_only:
            return (
                f"⚠️ points/boxes: {self.model_name}, whose decoder learned class tokens only: a point may give the "
                f"whole structure · {token_part}"
            )
        kind = (
            f"trained on {self.engine.record.prompt_mode} prompts"
            if self.engine.trained
            else "prompt decoder"
        )
        return f"points/boxes: {self.model_name} ({kind}) · {token_part}"

    def _labels_used(self) -> bool:
        return self.labels is not None and bool(self.labels.any())

    def _engines(self) -> list[SegmentationEngine]:
        return [e for e in dict.fromkeys((self.engine, self.prompt_engine)) if e is not None]

    def _drop_engine(self) -> None:
        for engine in self._engines():
            engine.close()
        self.engine = self.prompt_engine = None

    def set_model(self, name: str) -> None:
        """Switch models (the label map and prompts stay)."""
        if name not in self.registry.names:
            raise ValueError(f"unknown model {name!r}; available: {self.registry.names}")
        self.model_name = name
        self._drop_engine()
        self._build_engine()

    @property
    def has_volume(self) -> bool:
        return self.ras is not None

    def require_volume(self) -> Volume:
        """The RAS volume.

        Raises:
            RuntimeError: nothing is open yet.
        """
        if self.ras is None:
            raise RuntimeError("open a volume first (upload a NIfTI file or a DICOM series)")
        return self.ras

    def require_engine(self) -> SegmentationEngine:
        """The model engine.

        Raises:
            RuntimeError: no volume, or the model failed to load (the message says why).
        """
        self.require_volume()
        if self.engine is None:
            raise RuntimeError(self.engine_error or "no model is loaded")
        return self.engine

    def require_prompt_engine(self) -> SegmentationEngine:
        """The engine that answers points and boxes (the model's own, or the built-in base, see
        :meth:`model_roles`)."""
        self.require_engine()
        assert self.prompt_engine is not None
        return self.prompt_engine

    # --- navigation --------------------------------------------------------------------------------------------
    @property
    def slice_index(self) -> int:
        return self.index[self.axis]

    @property
    def n_slices(self) -> int:
        return int(self.require_volume().shape[self.axis])

    def set_axis(self, axis: int) -> None:
        """View along ``axis`` (0 sagittal, 1 coronal, 2 axial)."""
        vol = self.require_volume()
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if vol.is_2d and axis != 2:
            raise ValueError("a 2-D image has only the one (axial) view")
        self.axis = int(axis)
        self.prompts.corner = None
        self._prefetch()

    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (clipped to the volume)."""
        self.index[self.axis] = int(np.clip(int(index), 0, self.n_slices - 1))
        self._prefetch()

    def step(self, delta: int) -> None:
        self.set_slice(self.slice_index + int(delta))

    def _prefetch(self) -> None:
        for engine in self._engines():
            engine.request_prefetch(self.axis, self.slice_index)

    # --- window -------------------------------------------------------------------------------------------------
    def set_preset(self, name: str) -> None:
        """Apply a window preset: a CT one from :data:`salt_seg.preprocessing.WINDOW_PRESETS`, or ``auto``."""
        vol = self.require_volume()
        if name == "auto":
            sample = vol.array[0][::2, ::2, ::2] if min(vol.shape) > 4 else vol.array[0]
            lo, hi = intensity_range(sample, Preprocessing(intensity="mr"))
            self.level, self.width = nice((lo + hi) / 2.0), nice(max(hi - lo, 1e-3))
        else:
            self.level, self.width = window_preset(name)
        self.preset = name

    def set_window(self, level: float, width: float) -> None:
        if not width > 0:
            raise ValueError(f"window width must be > 0, got {width}")
        self.level, self.width, self.preset = float(level), float(width), "custom"

    def value_range(self) -> tuple[float, float]:
        """Lowest and highest voxel value (slider bounds)."""
        vol = self.require_volume()
        return float(vol.array.min()), float(vol.array.max())

    # --- slices -------------------------------------------------------------------------------------------------
    @property
    def spacing_xy(self) -> tuple[float, float]:
        """Millimetres per display column and per display row of the current view."""
        sp = self.require_volume().spacing
        u, v = (d for d in range(3) if d != self.axis)
        return sp[u], sp[v]

    def geometry(self) -> DisplayGeometry:
        rows, cols = slice_shape(self.require_volume().shape, self.axis)
        return DisplayGeometry.fit(rows, cols, self.spacing_xy, self.display_size, margin=LETTER_MARGIN)

    def image_slice(self) -> np.ndarray:
        """``rows x cols`` source intensities (HU for CT) of the viewed slice, channel 0."""
        return extract_slice(self.require_volume().array[0], self.axis, self.slice_index)

    def label_slice(self) -> np.ndarray:
        """``rows x cols`` label ids of the viewed slice (a copy)."""
        assert self.labels is not None
        return np.array(extract_slice(self.labels, self.axis, self.slice_index))

    def render(self) -> np.ndarray | None:
        """The viewed slice drawn for the screen (``H x W x 3`` uint8), or ``None`` without a volume."""
        if self.ras is None:
            return None
        grey = window_to_uint8(self.image_slice(), self.level, self.width)
        on_slice = self.prompts.on_slice(self.axis, self.slice_index).values()
        corner = self.prompts.corner
        mark_corner = None
        if corner is not None and corner[:2] == (self.axis, self.slice_index):
            mark_corner = (corner[3], corner[4])
        labels = self.label_slice()
        if self.label_set.hidden:
            labels[np.isin(labels, list(self.label_set.hidden))] = 0
        return render_slice(
            grey,
            labels,
            self.geometry(),
            colours=self.label_set.colours(),
            opacity=self.opacity,
            markers=markers_for(on_slice, mark_corner),
            letters=edge_letters(self.axis, self.axcodes),
        )

    def voxel_at(self, x: int, y: int) -> tuple[int, int, int]:
        """RAS-grid voxel ``(i, j, k)`` under slice pixel ``(x, y)`` of the viewed slice."""
        from salt_seg.data.volume import slice_to_voxel

        return slice_to_voxel(self.require_volume().shape, self.axis, self.slice_index, x, y)

    def source_voxel(self, x: float, y: float) -> tuple[int, int, int]:
        """The file's own voxel index (as stored, before reorientation) under slice pixel ``(x, y)``."""
        ras = self.require_volume()
        world = ras.voxel_to_world(np.array(self.voxel_at(int(x), int(y))))[0]
        assert self.volume is not None
        i, j, k = (int(v) for v in np.round(self.volume.world_to_voxel(world)[0]))
        return i, j, k

    def inspect(self, x: int, y: int) -> str:
        """Describe the voxel under slice pixel ``(x, y)``: file voxel index, RAS mm, value (HU for CT), label."""
        ras = self.require_volume()
        ijk = self.voxel_at(x, y)
        value = float(ras.array[(0, *ijk)])
        world = ras.voxel_to_world(np.array(ijk))[0]
        src = self.source_voxel(x, y)
        unit = " HU" if self.modality == "CT" else ""
        lab = int(self.labels[ijk]) if self.labels is not None else 0
        name = self.label_set.names.get(lab, "")
        named = f" ({name})" if lab and name and name != f"label {lab}" else ""
        self.cursor = (
            f"voxel [{', '.join(str(int(v)) for v in src)}] · RAS ({world[0]:.1f}, {world[1]:.1f}, {world[2]:.1f}) mm"
            f" · value {value:.6g}{unit} · label {lab}{named}"
        )
        return self.cursor

    # --- editing ------------------------------------------------------------------------------------------------
    def _key(self, key: tuple[int, int] | None) -> tuple[int, int]:
        return (self.axis, self.slice_index) if key is None else (int(key[0]), int(key[1]))

    @contextmanager
    def action(self, name: str, *, names: bool = False) -> Iterator[Action]:
        """Group every label and prompt write made inside into one undoable :class:`~salt_seg_apps.viewer.state.Action`.

        A use inside another joins the outer action. An exception inside puts back what was written so far
        (nothing half-done) and propagates. ``names``: the action may change label names; undo restores them.
        """
        outer = self._action
        if outer is not None:
            if names and outer.names is None:
                outer.names, outer.active = dict(self.label_set.names), self.label_set.active
            yield outer
            return
        act = Action(name)
        if names:
            act.names, act.active = dict(self.label_set.names), self.label_set.active
        self._action = act
        try:
            yield act
        except BaseException:
            self._action = None
            self._restore(act)
            raise
        self._action = None
        if not act.empty:
            self.undo_stack.push(act)
            self.unsaved = True

    def _record(self, key: tuple[int, int]) -> None:
        """Keep what slice ``key`` holds (labels, prompts) in the open action, the first time it is touched."""
        act = self._action
        assert act is not None, "label writes happen inside ViewerSession.action"
        assert self.labels is not None
        if key not in act.slices:
            act.slices[key] = np.array(extract_slice(self.labels, *key))
            act.prompts[key] = self.prompts.on_slice(*key)

    def _put_slice(self, new: np.ndarray, key: tuple[int, int]) -> None:
        assert self.labels is not None
        new = np.asarray(new).astype(self.labels.dtype)
        self.counts.add(extract_slice(self.labels, *key), -1)
        insert_slice(self.labels, *key, new)
        self.counts.add(new, +1)

    def _write_slice(self, new: np.ndarray, key: tuple[int, int] | None = None) -> None:
        k = self._key(key)
        self._record(k)
        self._put_slice(new, k)

    def _restore(self, act: Action) -> int:
        """Put back what ``act`` recorded (slices in reverse record order, then prompts and names); returns the
        voxels that changed back."""
        changed = 0
        for key in reversed(list(act.slices)):
            changed += int(np.count_nonzero(extract_slice(self.labels, *key) != act.slices[key]))
            self._put_slice(act.slices[key], key)
        for key, prompts in act.prompts.items():
            self.prompts.replace_slice(*key, prompts)
        if act.names is not None:
            self.label_set.names = dict(act.names)
            self.label_set.active = act.active if act.active in act.names else min(act.names)
            self.label_set.hidden &= set(act.names)
        return changed

    def edit_slice(self, new: np.ndarray, key: tuple[int, int] | None = None, name: str = "edit") -> None:
        """Replace a slice's labels (default: the viewed slice) as one undoable action."""
        with self.action(name):
            self._write_slice(new, key)

    @property
    def has_unsaved_labels(self) -> bool:
        """Labels were drawn or changed since the volume was opened, a label map loaded, or the last export."""
        return bool(self.unsaved and self._labels_used())

    def add_label(self, name: str | None = None) -> int:
        """Add a label (next free id) and make it active."""
        return self.label_set.add(name)

    def rename_label(self, label_id: int, name: str) -> str:
        """Rename a label (undoable); returns a one-line message."""
        with self.action("rename", names=True):
            old = self.label_set.rename(label_id, name)
        return f"renamed {old} to {self.label_set.names[int(label_id)]}"

    def delete_label(self, label_id: int) -> str:
        """Remove a label: its voxels and prompts go, and its name (undoable as one step)."""
        assert self.labels is not None
        cid = int(label_id)
        self.require_volume()
        if cid not in self.label_set.names:
            raise ValueError(f"unknown label {cid}; labels: {sorted(self.label_set.names)}")
        name = self.label_set.names[cid]
        with self.action(f"delete {name}", names=True):
            voxels = self.counts[cid]
            if voxels:
                new = self.labels.copy()
                new[new == cid] = 0
                self.replace_labels(new)
            for p in self.prompts.all():
                if p.class_id == cid:
                    key = (int(p.axis), int(p.slice_index))  # type: ignore[arg-type]
                    self._record(key)
                    kept = {c: q for c, q in self.prompts.on_slice(*key).items() if c != cid}
                    self.prompts.replace_slice(*key, kept)
            self.label_set.remove(cid)
        return f"deleted {name} ({voxels} voxel(s)); Undo brings it back"

    def click(self, x: int, y: int) -> str:
        """Apply the current tool at slice pixel ``(x, y)`` of the viewed slice; returns a one-line message."""
        self.inspect(x, y)
        tool, cid = self.tool, self.label_set.active
        if tool == "inspect":
            return self.cursor
        if tool in ("brush", "eraser"):
            return self.stroke([(x, y)])
        self.require_prompt_engine()
        a, i = self.axis, self.slice_index
        prompt = self.prompts.get(a, i, cid)
        if tool == "box":
            corner = self.prompts.corner
            if corner is None or corner[:3] != (a, i, cid):
                self.prompts.corner = (a, i, cid, float(x), float(y))
                return "box: first corner set; click the opposite corner"
            self.prompts.corner = None
            box = box_from_points(corner[3:], (x, y))
            new = Prompt(prompt.points, prompt.point_labels, box, cid, i, a)
        elif tool in ("positive point", "negative point"):
            label = 1 if tool == "positive point" else 0
            new = Prompt([*prompt.points, (x, y)], [*prompt.point_labels, label], prompt.box, cid, i, a)
        else:
            raise ValueError(f"unknown tool {tool!r}; tools: {list(TOOLS)}")
        message = self.apply_prompt(new)
        self.inspect(x, y)  # the label under the cursor changed
        return message

    def stroke(self, points: list[tuple[int, int]]) -> str:
        """Brush (or erase, with the eraser tool) along slice pixels ``points`` of the viewed slice: one undoable
        action however long the stroke. Returns a one-line message naming the file voxel where it started."""
        if self.tool not in ("brush", "eraser"):
            raise ValueError(f"strokes need the brush or the eraser tool, not {self.tool!r}")
        lab = self.label_slice()
        mask = stroke_mask(lab.shape, points, self.brush_radius)
        value = self.label_set.active if self.tool == "brush" else 0
        if self.tool == "eraser":
            changed = int((mask & (lab != 0)).sum())
        else:
            changed = int((mask & (lab != value)).sum())
        lab[mask] = value
        self.edit_slice(lab, name=self.tool)
        x, y = points[-1]
        self.inspect(x, y)
        where = "voxel [" + ", ".join(str(v) for v in self.source_voxel(*points[0])) + "]"
        kind = f"{len(points)}-point stroke" if len(points) > 1 else "dab"
        return f"{self.tool} {kind} from {where}: {changed} voxel(s) changed"

    def apply_prompt(self, prompt: Prompt) -> str:
        """Make ``prompt`` its slice's prompt for its label, segment, and write the mask (one undoable action).

        The label's pixels on that slice are replaced by the new mask; other labels are never overwritten.
        """
        engine = self.require_prompt_engine()
        assert self.labels is not None and prompt.axis is not None and prompt.slice_index is not None
        key = (int(prompt.axis), int(prompt.slice_index))
        out = engine.decode(key[0], [(key[1], prompt)])[0]
        lab = np.array(extract_slice(self.labels, *key))
        cid = prompt.class_id
        lab[lab == cid] = 0
        lab[out.mask & (lab == 0)] = cid
        kind = "box" if prompt.box is not None and not prompt.points else "point"
        with self.action(kind):
            self._record(key)
            self.prompts.put(prompt)
            self._write_slice(lab, key)
        name = self.label_set.names.get(cid, str(cid))
        return f"{name}: {int(out.mask.sum())} px, predicted IoU {out.score:.2f}"

    def undo(self) -> str:
        """Undo the last action, whatever it touched (one slice, or many); a one-slice action is shown at once.

        Returns a one-line message.
        """
        self.require_volume()
        self.prompts.corner = None
        act = self.undo_stack.pop()
        if act is None:
            return "nothing to undo"
        voxels = self._restore(act)
        self.unsaved = True
        keys = list(act.slices)
        if len(keys) == 1:  # show the slice that changed back
            axis, index = keys[0]
            self.axis, self.index[axis] = int(axis), int(index)
            self._prefetch()
        where = f"{AXIS_NAMES[keys[0][0]]} slice {keys[0][1]}" if len(keys) == 1 else f"{voxels} voxel(s)"
        return f"undone: {act.name} ({where}) · {len(self.undo_stack)} more step(s) to undo"

    def clear_slice(self) -> str:
        """Remove every label and prompt from the viewed slice (undoable)."""
        self.require_volume()
        with self.action("clear slice"):
            self._write_slice(np.zeros_like(self.label_slice()))
            self.prompts.replace_slice(self.axis, self.slice_index, {})
        self.prompts.corner = None
        return f"cleared {AXIS_NAMES[self.axis]} slice {self.slice_index}"

    def replace_labels(self, new: np.ndarray, name: str = "label map") -> int:
        """Replace the whole label map as one undoable action; returns the slices changed along the viewed axis.

        Only the changed slices are kept for undo, along whichever axis has the fewest of them.
        """
        assert self.labels is not None
        new = np.asarray(new, dtype=np.uint16)
        if new.shape != self.labels.shape:
            raise ValueError(f"label map shape {new.shape} differs from the volume {self.labels.shape}")
        diff = self.labels != new
        changed = {a: np.nonzero(diff.any(axis=tuple(d for d in range(3) if d != a)))[0] for a in range(3)}
        store = min(range(3), key=lambda a: (len(changed[a]) * diff.size // diff.shape[a], a != self.axis))
        with self.action(name):
            for i in changed[store]:
                self._record((store, int(i)))
            self.labels = np.array(new)
            self.counts = VoxelCounts(self.labels)
        return len(changed[self.axis])

    # --- summary ------------------------------------------------------------------------------------------------
    def volumes(self) -> dict[str, dict]:
        """Per label: name, voxels and volume in mL (the fields of :func:`salt_seg.inference.summary.structure_stats`).

        Counts are kept up to date on every slice write, so this costs nothing per click on large volumes.
        """
        if self.labels is None or self.ras is None:
            return {}
        mm3 = voxel_volume_mm3(self.ras.geometry)
        extra = {i: f"label {i}" for i in self.counts.present() if i not in self.label_set.names}
        names = {**self.label_set.names, **extra}
        return {
            str(cid): {
                "name": name,
                "voxels": self.counts[cid],
                "volume_ml": round(self.counts[cid] * mm3 / 1000.0, 4),
            }
            for cid, name in sorted(names.items())
        }

    def nbytes(self) -> int:
        """Memory this session holds, in bytes: the volume (as loaded and on the RAS grid, counted once when they
        share memory), the label map, the undo snapshots, and the engine's prepared slices and cached embeddings.

        An estimate for the app's memory budget (Python objects, the shared model and a shared volume are not
        counted).
        """
        arrays: list[Any] = [self.labels]
        arrays += [v.array for v in (self.volume, self.ras) if v is not None]
        arrays += self.undo_stack.arrays()
        for engine in self._engines():
            arrays += engine.held_arrays()

        def base_of(a: Any) -> Any:
            while getattr(a, "base", None) is not None and isinstance(a.base, type(a)):
                a = a.base  # views share their base's memory: count the base once
            return a

        total, seen = 0, set()
        if self.shared_volume and self.volume is not None:
            seen.add(id(base_of(self.volume.array)))  # nor views of it (a RAS grid that is one)
        for a in arrays:
            if a is None:
                continue
            base = base_of(a)
            if id(base) in seen:
                continue
            seen.add(id(base))
            nbytes = getattr(base, "nbytes", None)
            if nbytes is None and hasattr(base, "element_size"):  # a torch tensor
                nbytes = base.element_size() * base.nelement()
            total += int(nbytes or 0)
        return total

    def close(self) -> None:
        """Free everything: the engine's thread and cache, the arrays and the session folder."""
        self._drop_engine()
        self.volume = self.ras = self.labels = None
        shutil.rmtree(self.workdir, ignore_errors=True)
