"""The project's one prompt type, shared by training simulation, the predictor, prompt files and the viewer.

Coordinates are in *slice pixels* of the 2-D slice the prompt belongs to, with SAM's convention: a point is
``(x, y)`` where ``x`` is the column index and ``y`` the row index of ``slice_array[y, x]``. A box is
``(x0, y0, x1, y1)`` with inclusive corners (the first and last pixel covered). ``slice_index`` and ``axis`` say
which slice of a volume the prompt lives on (``None`` for plain 2-D images); ``class_id`` names the label the
resulting mask is written to. A prompt with neither points nor a box asks for the learned class token of
``class_id`` (automatic, prompt-free segmentation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT_FILE_VERSION = 1


@dataclass
class Prompt:
    """One prompt on one slice.

    Attributes:
        points: ``N`` points as ``(x, y)`` slice-pixel coordinates (x = column, y = row).
        point_labels: ``N`` labels, 1 = positive (inside), 0 = negative (outside).
        box: ``(x0, y0, x1, y1)`` inclusive pixel corners, or ``None``.
        class_id: label id (>= 1) the mask belongs to.
        slice_index: index of the slice along ``axis`` in the volume, or ``None`` for a 2-D image.
        axis: the volume axis the slice is taken along, or ``None`` for a 2-D image.
    """

    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    class_id: int = 1
    slice_index: int | None = None
    axis: int | None = None

    def __post_init__(self) -> None:
        self.points = [(float(p[0]), float(p[1])) for p in self.points]
        self.point_labels = [int(v) for v in self.point_labels]
        if len(self.points) != len(self.point_labels):
            raise ValueError(
                f"Prompt: {len(self.points)} points but {len(self.point_labels)} point_labels; they must match"
            )
        bad = [v for v in self.point_labels if v not in (0, 1)]
        if bad:
            raise ValueError(f"Prompt: point_labels must be 0 (negative) or 1 (positive), got {bad[0]}")
        if self.box is not None:
            if len(self.box) != 4:
                raise ValueError(f"Prompt: box must have 4 numbers (x0, y0, x1, y1), got {len(self.box)}")
            x0, y0, x1, y1 = (float(v) for v in self.box)
            if x1 < x0 or y1 < y0:
                raise ValueError(f"Prompt: box corners must satisfy x0<=x1 and y0<=y1, got {self.box}")
            self.box = (x0, y0, x1, y1)
        if int(self.class_id) < 1:
            raise ValueError(f"Prompt: class_id must be >= 1 (0 is background), got {self.class_id}")
        self.class_id = int(self.class_id)
        if self.axis is not None and int(self.axis) not in (0, 1, 2):
            raise ValueError(f"Prompt: axis must be 0, 1 or 2, got {self.axis}")

    @property
    def is_automatic(self) -> bool:
        """True when the prompt carries no geometry and asks for the learned class token."""
        return not self.points and self.box is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class_id": self.class_id}
        if self.points:
            d["points"] = [list(p) for p in self.points]
            d["point_labels"] = list(self.point_labels)
        if self.box is not None:
            d["box"] = list(self.box)
        if self.slice_index is not None:
            d["slice_index"] = int(self.slice_index)
        if self.axis is not None:
            d["axis"] = int(self.axis)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        if not isinstance(d, dict):
            raise ValueError(f"a prompt must be a JSON object, got {type(d).__name__}")
        known = {"points", "point_labels", "box", "class_id", "slice_index", "axis"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown prompt key(s) {sorted(unknown)}; valid keys: {sorted(known)}")
        box = d.get("box")
        return cls(
            points=[tuple(p) for p in d.get("points", [])],
            point_labels=list(d.get("point_labels", [])),
            box=tuple(box) if box is not None else None,
            class_id=d.get("class_id", 1),
            slice_index=d.get("slice_index"),
            axis=d.get("axis"),
        )


def save_prompts(path: str | Path, prompts: Iterable[Prompt], *, extra: dict[str, Any] | None = None) -> None:
    """Write prompts to a JSON prompt file atomically (temp file + rename)."""
    path = Path(path)
    doc: dict[str, Any] = {"version": PROMPT_FILE_VERSION, "coordinates": "voxel"}
    if extra:
        doc.update(extra)
    doc["prompts"] = [p.to_dict() for p in prompts]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def load_prompts(path: str | Path) -> tuple[list[Prompt], dict[str, Any]]:
    """Read a prompt file; returns the prompts and the file's other top-level fields.

    Raises:
        ValueError: the file is not valid JSON or a prompt in it is malformed (the message names the file).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON prompt file ({exc})") from None
    if isinstance(doc, list):
        doc = {"prompts": doc}
    if not isinstance(doc, dict) or "prompts" not in doc:
        raise ValueError(f"{path}: a prompt file needs a top-level 'prompts' list")
    prompts: list[Prompt] = []
    for i, item in enumerate(doc["prompts"]):
        try:
            prompts.append(Prompt.from_dict(item))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: prompt #{i}: {exc}") from None
    meta = {k: v for k, v in doc.items() if k != "prompts"}
    return prompts, meta


def box_from_points(p0: Sequence[float], p1: Sequence[float]) -> tuple[float, float, float, float]:
    """Box with inclusive corners from two clicked points in any order."""
    return (min(p0[0], p1[0]), min(p0[1], p1[1]), max(p0[0], p1[0]), max(p0[1], p1[1]))
