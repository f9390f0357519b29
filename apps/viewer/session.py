"""One browser tab's viewer: the volume, the view, the label map, and the editing actions on them.

:class:`ViewerSession` is a plain class (no Gradio, no ``nn.Module``): the Gradio handlers in
:mod:`apps.viewer.handlers` translate events into its methods, and tests call them directly.

The label map lives on the volume's RAS grid (``I x J x K`` uint16), the grid the viewer slices; it is mapped back
to the file's own voxel grid only on export (:meth:`ViewerSession.export`). Every edit of a slice pushes the slice's
previous labels and prompts onto that slice's undo stack; volume-wide edits (automatic segmentation of the volume,
propagation, a loaded label map) push one snapshot per changed slice along the viewed axis.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from apps.viewer.engine import ModelRegistry, SegmentationEngine, guess_modality
from apps.viewer.render import DisplayGeometry, edge_letters, markers_for, render_slice, window_to_uint8
from apps.viewer.state import LabelSet, PromptBook, SliceHistory, Snapshot, VoxelCounts
from salt_seg.data.volume import Volume, extract_slice, insert_slice, slice_shape
from salt_seg.inference.segment import InferenceSettings
from salt_seg.inference.summary import voxel_volume_mm3
from salt_seg.preprocessing import Preprocessing, intensity_range, window_preset
from salt_seg.prompts import Prompt, box_from_points

log = logging.getLogger(__name__)

AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}
#: interaction tools: what a click on the image does.
TOOLS = ("positive point", "negative point", "box", "brush", "eraser", "inspect")
#: window presets offered (``auto``: 0.5-99.5 percentiles, the MR default).
PRESETS = ("auto", *("soft_tissue", "lung", "bone", "brain"))

Progress = Callable[[float, str], None]


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
    ) -> None:
        self.registry = registry
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
        self.modality = "image"
        self.axcodes = "RAS"
        self.axis = 2
        self.index = {0: 0, 1: 0, 2: 0}
        self.level, self.width, self.preset = 0.0, 1.0, "auto"
        self.opacity = 0.5
        self.tool = TOOLS[0]
        self.brush_radius = 3
        self.label_set = LabelSet()
        self.history = SliceHistory()
        self.prompts = PromptBook()
        self.engine: SegmentationEngine | None = None
        self.engine_error: str | None = None
        self.cursor = ""
        self.staged: Any = None  # an upload waiting for the user's series choice (handlers)
        self.upload_name = ""  # the user's name for the latest upload (messages never show server paths)
        self.shared_volume = False  # the volume is the app's, shared by several sessions (see open)
        self.lock = threading.RLock()  # the app serialises a tab's events with it
        self.counts = VoxelCounts()  # voxels per label id, kept up to date on every write

    # --- volume ------------------------------------------------------------------------------------------------
    def open(self, volume: Volume, source_path: str | Path | None = None, *, shared: bool = False) -> None:
        """Show a freshly loaded volume: RAS grid, empty label map, middle slices, a window for its modality.

        The model engine is (re)built for it; a model that fails to load leaves the viewer usable without one
        (:attr:`engine_error` says why). ``shared``: the volume is the app's, read by several sessions (the
        command-line ``PATH``); :meth:`nbytes` leaves it out.
        """
        self._drop_engine()
        self.volume = volume
        self.shared_volume = bool(shared)
        self.ras = volume.to_ras()
        self.source_path = Path(source_path) if source_path is not None else None
        self.modality = guess_modality(volume)
        self.axcodes = self.ras.axcodes
        self.labels = np.zeros(self.ras.shape, dtype=np.uint16)
        self.counts = VoxelCounts(self.labels)
        self.axis = 2
        self.index = {a: n // 2 for a, n in enumerate(self.ras.shape)}
        self.history.clear()
        self.prompts.clear()
        self.label_set = LabelSet()
        self.cursor = ""
        self.set_preset("soft_tissue" if self.modality == "CT" else "auto")
        self._build_engine()

    def _build_engine(self) -> None:
        self.engine, self.engine_error = None, None
        if self.volume is None or self.ras is None:
            return
        try:
            loaded = self.registry.get(self.model_name)
            self.engine = SegmentationEngine(
                loaded,
                self.volume,
                self.ras.shape,
                modality=self.modality,
                cache_size=self.cache_size,
                radius=self.radius,
            )
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            self.engine_error = f"model {self.model_name!r} is not available: {exc}"
            log.warning("%s", self.engine_error)
            return
        if self.engine.class_names:
            names = {**self.engine.class_names}
            self.label_set = LabelSet({**names, **self.label_set.names} if self._labels_used() else names)
        self.engine.request_prefetch(self.axis, self.slice_index)

    def _labels_used(self) -> bool:
        return self.labels is not None and bool(self.labels.any())

    def _drop_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None

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
        if self.engine is not None:
            self.engine.request_prefetch(self.axis, self.slice_index)

    # --- window -------------------------------------------------------------------------------------------------
    def set_preset(self, name: str) -> None:
        """Apply a window preset: a CT one from :data:`salt_seg.preprocessing.WINDOW_PRESETS`, or ``auto``."""
        vol = self.require_volume()
        if name == "auto":
            sample = vol.array[0][::2, ::2, ::2] if min(vol.shape) > 4 else vol.array[0]
            lo, hi = intensity_range(sample, Preprocessing(intensity="mr"))
            self.level, self.width = (lo + hi) / 2.0, max(hi - lo, 1e-3)
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
        return DisplayGeometry.fit(rows, cols, self.spacing_xy, self.display_size)

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
        return render_slice(
            grey,
            self.label_slice(),
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

    def inspect(self, x: int, y: int) -> str:
        """Describe the voxel under slice pixel ``(x, y)``: file voxel index, RAS mm, value (HU for CT), label."""
        ras = self.require_volume()
        ijk = self.voxel_at(x, y)
        value = float(ras.array[(0, *ijk)])
        world = ras.voxel_to_world(np.array(ijk))[0]
        assert self.volume is not None
        src = np.round(self.volume.world_to_voxel(world)[0]).astype(int)
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

    def _snapshot(self, key: tuple[int, int] | None = None) -> None:
        k = self._key(key)
        assert self.labels is not None
        self.history.push(k, Snapshot(np.array(extract_slice(self.labels, *k)), self.prompts.on_slice(*k)))

    def _write_slice(self, new: np.ndarray, key: tuple[int, int] | None = None) -> None:
        assert self.labels is not None
        k = self._key(key)
        new = np.asarray(new).astype(self.labels.dtype)
        self.counts.add(extract_slice(self.labels, *k), -1)
        insert_slice(self.labels, *k, new)
        self.counts.add(new, +1)

    def edit_slice(self, new: np.ndarray, key: tuple[int, int] | None = None) -> None:
        """Replace a slice's labels (default: the viewed slice) as one undoable edit."""
        self._snapshot(key)
        self._write_slice(new, key)

    def add_label(self, name: str | None = None) -> int:
        """Add a label (next free id) and make it active."""
        return self.label_set.add(name)

    def click(self, x: int, y: int) -> str:
        """Apply the current tool at slice pixel ``(x, y)`` of the viewed slice; returns a one-line message."""
        self.inspect(x, y)
        tool, cid = self.tool, self.label_set.active
        if tool == "inspect":
            return self.cursor
        if tool in ("brush", "eraser"):
            self.edit_slice(self._stamp(x, y, cid if tool == "brush" else 0))
            self.inspect(x, y)
            return f"{tool} at ({x}, {y})"
        self.require_engine()
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

    def apply_prompt(self, prompt: Prompt) -> str:
        """Make ``prompt`` its slice's prompt for its label, segment, and write the mask (undoable on that slice).

        The label's pixels on that slice are replaced by the new mask; other labels are never overwritten.
        """
        engine = self.require_engine()
        assert self.labels is not None and prompt.axis is not None and prompt.slice_index is not None
        key = (int(prompt.axis), int(prompt.slice_index))
        self._snapshot(key)
        self.prompts.put(prompt)
        out = engine.decode(key[0], [(key[1], prompt)])[0]
        lab = np.array(extract_slice(self.labels, *key))
        cid = prompt.class_id
        lab[lab == cid] = 0
        lab[out.mask & (lab == 0)] = cid
        self._write_slice(lab, key)
        name = self.label_set.names.get(cid, str(cid))
        return f"{name}: {int(out.mask.sum())} px, predicted IoU {out.score:.2f}"

    def _stamp(self, x: int, y: int, value: int) -> np.ndarray:
        lab = self.label_slice()
        yy, xx = np.ogrid[: lab.shape[0], : lab.shape[1]]
        r = max(0, int(self.brush_radius))
        lab[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = value
        return lab

    def undo(self) -> str:
        """Restore the viewed slice as it was before its last edit."""
        self.require_volume()
        key = (self.axis, self.slice_index)
        snap = self.history.pop(key)
        self.prompts.corner = None
        if snap is None:
            return "nothing to undo on this slice"
        self._write_slice(snap.labels)
        self.prompts.replace_slice(*key, snap.prompts)
        return f"undone ({self.history.depth(key)} more step(s) on this slice)"

    def clear_slice(self) -> str:
        """Remove every label and prompt from the viewed slice (undoable)."""
        self.require_volume()
        self._snapshot()
        self._write_slice(np.zeros_like(self.label_slice()))
        self.prompts.replace_slice(self.axis, self.slice_index, {})
        self.prompts.corner = None
        return f"cleared {AXIS_NAMES[self.axis]} slice {self.slice_index}"

    def replace_labels(self, new: np.ndarray) -> int:
        """Replace the whole label map, pushing an undo snapshot for every changed slice of the viewed axis."""
        assert self.labels is not None
        old = self.labels
        others = tuple(d for d in range(3) if d != self.axis)
        changed = np.nonzero((old != new).any(axis=others))[0]
        for i in changed:
            key = (self.axis, int(i))
            self.history.push(key, Snapshot(np.array(extract_slice(old, *key)), self.prompts.on_slice(*key)))
        self.labels = np.asarray(new, dtype=np.uint16)
        self.counts = VoxelCounts(self.labels)
        return len(changed)

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
        arrays += [snap.labels for snap in self.history.snapshots()]
        engine = self.engine
        if engine is not None:
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
