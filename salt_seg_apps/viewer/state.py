"""Plain bookkeeping classes of one viewer session: labels, the prompts placed, the undo stack.

Everything here is in *display* coordinates of the RAS grid the viewer slices: a slice is ``(axis, index)`` and a
pixel ``(x, y)`` is ``slice[y, x]`` of :func:`salt_seg.data.volume.extract_slice` (the same pixels the model's
prepared slices use, see :mod:`salt_seg_apps.viewer.engine`). No Gradio and no torch: the classes are unit-testable.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from salt_seg.inference.sidecars import label_color
from salt_seg.prompts import Prompt

SliceKey = tuple[int, int]
#: actions kept for undo.
DEFAULT_UNDO_DEPTH = 64
#: memory the undo stack may hold (previous contents of the slices its actions changed).
DEFAULT_UNDO_BYTES = 512 * 1024**2


@dataclass
class LabelSet:
    """The structures being segmented: id -> name, and which one clicks and the brush write to.

    Attributes:
        names: label id (>= 1) -> name.
        active: the id prompts, automatic segmentation of one class and the brush write to.
        colors: label id -> RGB where it differs from the palette (a loaded sidecar's colours).
        hidden: label ids not drawn on the image (they stay in the label map and the export).
    """

    names: dict[int, str] = field(default_factory=lambda: {1: "label 1"})
    active: int = 1
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    hidden: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = {1: "label 1"}
        self.names = {int(k): str(v) for k, v in sorted(self.names.items())}
        if min(self.names) < 1:
            raise ValueError(f"label ids must be >= 1 (0 is the background), got {sorted(self.names)}")
        if self.active not in self.names:
            self.active = min(self.names)

    def add(self, name: str | None = None) -> int:
        """Add a label with the next free id (max + 1) and make it active; returns its id."""
        new = max(self.names) + 1
        if new > 65535:
            raise ValueError("no free label id: label maps hold ids up to 65535")
        clean = " ".join(str(name or "").split()) or f"label {new}"
        self.names[new] = clean
        self.active = new
        return new

    def ensure(self, ids: Iterable[int]) -> list[int]:
        """Add names for ids found in a loaded label map; returns the ids that were new."""
        new = sorted(int(i) for i in ids if int(i) > 0 and int(i) not in self.names)
        for i in new:
            self.names[i] = f"label {i}"
        self.names = dict(sorted(self.names.items()))
        return new

    def rename(self, label_id: int, name: str) -> str:
        """Give label ``label_id`` a new name (whitespace collapsed); returns the old name.

        Raises:
            ValueError: unknown id or an empty name.
        """
        self._check(label_id)
        clean = " ".join(str(name or "").split())
        if not clean:
            raise ValueError("a label name cannot be empty")
        old = self.names[int(label_id)]
        self.names[int(label_id)] = clean
        return old

    def remove(self, label_id: int) -> None:
        """Forget label ``label_id`` (its voxels are the caller's business); ``label 1`` is left when none remain."""
        self._check(label_id)
        del self.names[int(label_id)]
        self.colors.pop(int(label_id), None)
        self.hidden.discard(int(label_id))
        if not self.names:
            self.names = {1: "label 1"}
        if self.active not in self.names:
            self.active = min(self.names)

    def toggle(self, label_id: int) -> bool:
        """Show or hide label ``label_id`` on the image; returns whether it is now visible."""
        self._check(label_id)
        self.hidden ^= {int(label_id)}
        return int(label_id) not in self.hidden

    def _check(self, label_id: int) -> None:
        if int(label_id) not in self.names:
            raise ValueError(f"unknown label {label_id}; labels: {sorted(self.names)}")

    def select(self, label_id: int) -> None:
        """Make ``label_id`` active.

        Raises:
            ValueError: unknown id.
        """
        self._check(label_id)
        self.active = int(label_id)

    def colours(self) -> dict[int, tuple[int, int, int]]:
        """Label id -> RGB, the palette the exported sidecars use (:func:`salt_seg.inference.sidecars.label_color`)."""
        return {i: tuple(self.colors.get(i, label_color(i))) for i in self.names}  # type: ignore[misc]

    def choices(self) -> list[tuple[str, int]]:
        """``(display name, id)`` pairs for a dropdown."""
        return [(f"{i}: {n}", i) for i, n in self.names.items()]


@dataclass
class Action:
    """One undoable action: what every slice it touched held before it, whatever the action's scope.

    A click or a brush stroke touches one slice; automatic segmentation of the volume, propagation or a loaded
    label map touch many (only the slices that changed are kept, so a volume-wide action that changed 10 slices
    costs 10 slices). Slices are restored in the reverse of the order they were recorded, which gives back the
    exact state before the action even when slices of different axes overlap.

    Attributes:
        name: what the action was (``"point"``, ``"automatic segmentation"``, ...), for the status line.
        slices: ``(axis, index)`` -> ``rows x cols`` label ids of that slice before the action, in record order.
        prompts: ``(axis, index)`` -> class id -> the prompt that slice held before the action.
        names: the label names before the action, when the action changed them (else ``None``).
        active: the active label before the action, when ``names`` is kept.
    """

    name: str
    slices: dict[SliceKey, np.ndarray] = field(default_factory=dict)
    prompts: dict[SliceKey, dict[int, Prompt]] = field(default_factory=dict)
    names: dict[int, str] | None = None
    active: int | None = None

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.slices.values())

    @property
    def empty(self) -> bool:
        return not self.slices and not self.prompts and self.names is None

    def arrays(self) -> list[np.ndarray]:
        return list(self.slices.values())


class UndoStack:
    """One undo stack for the whole session: each entry is an :class:`Action`, whatever it touched.

    Args:
        max_actions: actions kept (the oldest is dropped).
        max_bytes: what the kept slices may hold together; beyond it the oldest actions are dropped (the newest is
            always kept, so the last action can be undone even when it alone is larger).
    """

    def __init__(self, max_actions: int = DEFAULT_UNDO_DEPTH, max_bytes: int = DEFAULT_UNDO_BYTES) -> None:
        if max_actions < 1:
            raise ValueError(f"max_actions must be >= 1, got {max_actions}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_actions, self.max_bytes = int(max_actions), int(max_bytes)
        self._actions: list[Action] = []

    def __len__(self) -> int:
        return len(self._actions)

    def push(self, action: Action) -> None:
        self._actions.append(action)
        del self._actions[: max(0, len(self._actions) - self.max_actions)]
        while len(self._actions) > 1 and self.nbytes > self.max_bytes:
            del self._actions[0]

    def pop(self) -> Action | None:
        """The latest action (removed), or ``None`` when there is nothing to undo."""
        return self._actions.pop() if self._actions else None

    def peek(self) -> Action | None:
        return self._actions[-1] if self._actions else None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._actions)

    def arrays(self) -> list[np.ndarray]:
        """Every slice array held (for memory accounting)."""
        return [arr for a in list(self._actions) for arr in a.arrays()]

    def clear(self) -> None:
        self._actions.clear()


class PromptBook:
    """The prompts placed by the user: at most one :class:`~salt_seg.prompts.Prompt` per slice and label.

    Points accumulate in the slice's prompt for the active label; a box replaces the previous box. ``corner`` is
    the first click of a box still waiting for its second click.
    """

    def __init__(self) -> None:
        self._prompts: dict[tuple[int, int, int], Prompt] = {}
        self.corner: tuple[int, int, int, float, float] | None = None

    def __len__(self) -> int:
        return len(self._prompts)

    def get(self, axis: int, index: int, class_id: int) -> Prompt:
        """The prompt of a label on a slice (an empty prompt when there is none; a copy)."""
        p = self._prompts.get((axis, index, class_id))
        if p is None:
            return Prompt(class_id=class_id, slice_index=index, axis=axis)
        return copy.deepcopy(p)

    def put(self, prompt: Prompt) -> None:
        """Store a prompt (an empty one removes the entry)."""
        key = (int(prompt.axis), int(prompt.slice_index), int(prompt.class_id))  # type: ignore[arg-type]
        if prompt.is_automatic:
            self._prompts.pop(key, None)
        else:
            self._prompts[key] = copy.deepcopy(prompt)

    def on_slice(self, axis: int, index: int) -> dict[int, Prompt]:
        """Class id -> prompt of every label on a slice (copies)."""
        return {
            c: copy.deepcopy(p) for (a, i, c), p in sorted(self._prompts.items()) if a == axis and i == index
        }

    def replace_slice(self, axis: int, index: int, prompts: dict[int, Prompt]) -> None:
        """Set a slice's prompts to exactly ``prompts`` (undo)."""
        for key in [k for k in self._prompts if k[0] == axis and k[1] == index]:
            del self._prompts[key]
        for p in prompts.values():
            self.put(p)

    def all(self) -> list[Prompt]:
        """Every stored prompt, ordered by axis, slice and label."""
        return [copy.deepcopy(p) for _, p in sorted(self._prompts.items())]

    def clear(self) -> None:
        self._prompts.clear()
        self.corner = None


class VoxelCounts:
    """Voxels per label id of a label map, updated slice by slice (no pass over the volume per edit)."""

    def __init__(self, labels: np.ndarray | None = None) -> None:
        self.counts = np.zeros(1, dtype=np.int64)
        if labels is not None:
            self.add(labels, +1)

    def add(self, labels: np.ndarray, sign: int) -> None:
        """Count (``sign = +1``) or uncount (``-1``) the ids in ``labels``."""
        counts = np.bincount(np.asarray(labels).ravel(), minlength=len(self.counts))
        if len(counts) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(counts) - len(self.counts)))
        self.counts[: len(counts)] += sign * counts

    def __getitem__(self, label_id: int) -> int:
        return int(self.counts[label_id]) if 0 <= label_id < len(self.counts) else 0

    def present(self) -> set[int]:
        """Label ids (not 0) with at least one voxel."""
        return {int(i) for i in np.nonzero(self.counts)[0] if i}
