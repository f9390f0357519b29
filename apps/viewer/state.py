"""Plain bookkeeping classes of one viewer session: labels, the prompts placed, per-slice undo.

Everything here is in *display* coordinates of the RAS grid the viewer slices: a slice is ``(axis, index)`` and a
pixel ``(x, y)`` is ``slice[y, x]`` of :func:`salt_seg.data.volume.extract_slice` (the same pixels the model's
prepared slices use, see :mod:`apps.viewer.engine`). No Gradio and no torch: the classes are unit-testable.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from salt_seg.inference.sidecars import label_color
from salt_seg.prompts import Prompt

SliceKey = tuple[int, int]
#: snapshots kept per slice for undo.
DEFAULT_UNDO_DEPTH = 32


@dataclass
class LabelSet:
    """The structures being segmented: id -> name, and which one clicks and the brush write to.

    Attributes:
        names: label id (>= 1) -> name.
        active: the id prompts, automatic segmentation of one class and the brush write to.
    """

    names: dict[int, str] = field(default_factory=lambda: {1: "label 1"})
    active: int = 1

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

    def select(self, label_id: int) -> None:
        """Make ``label_id`` active.

        Raises:
            ValueError: unknown id.
        """
        if int(label_id) not in self.names:
            raise ValueError(f"unknown label {label_id}; labels: {sorted(self.names)}")
        self.active = int(label_id)

    def colours(self) -> dict[int, tuple[int, int, int]]:
        """Label id -> RGB, the palette the exported sidecars use (:func:`salt_seg.inference.sidecars.label_color`)."""
        return {i: label_color(i) for i in self.names}

    def choices(self) -> list[tuple[str, int]]:
        """``(display name, id)`` pairs for a dropdown."""
        return [(f"{i}: {n}", i) for i, n in self.names.items()]


@dataclass
class Snapshot:
    """One slice as it was before an edit (labels and prompts), for undo.

    Attributes:
        labels: ``rows x cols`` label ids of the slice.
        prompts: class id -> the prompt on that slice.
    """

    labels: np.ndarray
    prompts: dict[int, Prompt]


class SliceHistory:
    """Per-slice undo stacks: each edit of slice ``(axis, index)`` pushes what the slice held before it.

    Args:
        max_depth: snapshots kept per slice (the oldest is dropped).
    """

    def __init__(self, max_depth: int = DEFAULT_UNDO_DEPTH) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.max_depth = int(max_depth)
        self._stacks: dict[SliceKey, list[Snapshot]] = {}

    def push(self, key: SliceKey, snapshot: Snapshot) -> None:
        stack = self._stacks.setdefault(key, [])
        stack.append(snapshot)
        del stack[: max(0, len(stack) - self.max_depth)]

    def pop(self, key: SliceKey) -> Snapshot | None:
        """The latest snapshot of the slice (removed), or ``None`` when there is nothing to undo."""
        stack = self._stacks.get(key)
        if not stack:
            return None
        snap = stack.pop()
        if not stack:
            del self._stacks[key]
        return snap

    def depth(self, key: SliceKey) -> int:
        return len(self._stacks.get(key, ()))

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot held, all slices (for memory accounting)."""
        return [snap for stack in list(self._stacks.values()) for snap in stack]

    def clear(self) -> None:
        self._stacks.clear()


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
