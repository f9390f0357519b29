"""The project's one prompt type, shared by training simulation, the predictor, prompt files and the viewer.

Coordinates are in *slice pixels* of the 2-D slice the prompt belongs to, with SAM's convention: a point is
``(x, y)`` where ``x`` is the column index and ``y`` the row index of ``slice_array[y, x]``. A box is
``(x0, y0, x1, y1)`` with inclusive corners (the first and last pixel covered). ``slice_index`` and ``axis`` say
which slice of a volume the prompt lives on (``None`` for plain 2-D images); ``class_id`` names the label the
resulting mask is written to. A prompt with neither points nor a box asks for the learned class token of
``class_id`` (automatic, prompt-free segmentation).

Prompt files (:func:`save_prompts` / :func:`load_prompts`) hold prompts in one of two coordinate systems, named
by the file's top-level ``coordinates`` field:

``voxel`` (default)
    voxel indices of the source image *as stored* (the file's own grid, before any reorientation): ``axis`` is
    the voxel axis the slice is perpendicular to, ``slice_index`` the index along it, and a point ``(x, y)`` is
    the index along the first and the second of the two remaining axes in increasing order (:func:`plane_axes`;
    for ``axis == 2``: ``x = i``, ``y = j`` -- column and row of a DICOM slice). Boxes have inclusive corners.
``world``
    RAS millimetres (``"space": "LPS"`` is accepted too): a point is ``[x, y, z]``, a box is its two opposite
    corners ``[x0, y0, z0, x1, y1, z1]``; they are mapped to voxel indices with the image's affine
    (:func:`prompt_from_world`), so the slice and axis follow from the coordinates (``axis`` may be given).

In memory a loaded prompt is always in source voxel coordinates; :mod:`salt_seg.inference.coords` maps it onto
the model's slices.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.geometry import LPS_TO_RAS
from salt_seg.io import atomic_write_text

PROMPT_FILE_VERSION = 1
#: coordinate systems a prompt file may use (its top-level ``coordinates`` field).
COORDINATE_SYSTEMS = ("voxel", "world")
#: world spaces a ``world`` prompt file may use (its top-level ``space`` field; default ``RAS``).
WORLD_SPACES = ("RAS", "LPS")
#: a world point may lie this far (voxels) off its slice's centre plane and still belong to it.
_SLICE_TOLERANCE = 0.5 + 1e-6


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
        box_bounds: the object lies inside ``box`` (a user's box: the answer is clipped to it, as training only
            shows boxes that contain their object). Propagation's boxes, taken from the previous slice's mask,
            set it False: a structure may grow past them. Not written to prompt files.
    """

    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    class_id: int = 1
    slice_index: int | None = None
    axis: int | None = None
    box_bounds: bool = True

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


def save_prompts(
    path: str | Path,
    prompts: Iterable[Prompt],
    *,
    extra: dict[str, Any] | None = None,
    coordinates: str = "voxel",
    affine: np.ndarray | None = None,
    space: str = "RAS",
) -> None:
    """Write prompts to a JSON prompt file atomically (temp file + rename).

    Args:
        path: the JSON file.
        prompts: prompts in source voxel coordinates (see the module docstring).
        extra: other top-level fields (e.g. the image file name).
        coordinates: ``voxel`` (as given) or ``world`` (converted with ``affine``).
        affine: ``4 x 4`` voxel -> RAS mm of the source image; required for ``world``.
        space: ``RAS`` or ``LPS`` millimetres for ``world`` files.

    Raises:
        ValueError: unknown ``coordinates``/``space``, or ``world`` without an affine.
    """
    _check_choice("coordinates", coordinates, COORDINATE_SYSTEMS)
    path = Path(path)
    doc: dict[str, Any] = {"version": PROMPT_FILE_VERSION, "coordinates": coordinates}
    if coordinates == "world":
        _check_choice("space", space, WORLD_SPACES)
        if affine is None:
            raise ValueError("save_prompts: world coordinates need the image's affine")
        doc["space"] = space
    if extra:
        doc.update(extra)
    if coordinates == "world":
        doc["prompts"] = [prompt_to_world(p, affine, space=space) for p in prompts]  # type: ignore[arg-type]
    else:
        doc["prompts"] = [p.to_dict() for p in prompts]
    atomic_write_text(path, json.dumps(doc, indent=2))


def load_prompts(
    path: str | Path, *, affine: np.ndarray | None = None, default_axis: int = 2
) -> tuple[list[Prompt], dict[str, Any]]:
    """Read a prompt file; returns the prompts (source voxel coordinates) and the file's other top-level fields.

    Args:
        path: the JSON prompt file.
        affine: ``4 x 4`` voxel -> RAS mm of the source image; needed only for ``world`` files.
        default_axis: source voxel axis of a ``world`` prompt whose coordinates do not pin one down (a single
            point); callers pass the axis the model slices along.

    Raises:
        ValueError: the file is not valid JSON, a prompt in it is malformed, its coordinate system is unknown, or
            a ``world`` file is read without an affine (the message names the file).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON prompt file ({exc})") from None
    if isinstance(doc, list):
        doc = {"prompts": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("prompts"), list):
        raise ValueError(f"{path}: a prompt file needs a top-level 'prompts' list")
    coordinates = doc.get("coordinates", "voxel")
    if coordinates not in COORDINATE_SYSTEMS:
        raise ValueError(f"{path}: unknown coordinates {coordinates!r}; valid: {list(COORDINATE_SYSTEMS)}")
    space = doc.get("space", "RAS")
    if coordinates == "world":
        if space not in WORLD_SPACES:
            raise ValueError(f"{path}: unknown space {space!r}; valid: {list(WORLD_SPACES)}")
        if affine is None:
            raise ValueError(
                f"{path}: prompts are in world coordinates ({space} mm); converting them needs the image's affine"
            )
    prompts: list[Prompt] = []
    for i, item in enumerate(doc["prompts"]):
        try:
            if coordinates == "world":
                prompts.append(prompt_from_world(item, affine, default_axis=default_axis, space=space))  # type: ignore[arg-type]
            else:
                prompts.append(Prompt.from_dict(item))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: prompt #{i}: {exc}") from None
    meta = {k: v for k, v in doc.items() if k != "prompts"}
    return prompts, meta


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {list(allowed)}")


def plane_axes(axis: int) -> tuple[int, int]:
    """The two in-plane voxel axes of a slice along ``axis``, in increasing order.

    In a ``voxel`` prompt file a point ``(x, y)`` on slice ``slice_index`` along ``axis`` is the voxel whose index
    along ``plane_axes(axis)[0]`` is ``x``, along ``plane_axes(axis)[1]`` is ``y``, and along ``axis`` is
    ``slice_index``.
    """
    if int(axis) not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    u, v = (d for d in range(3) if d != int(axis))
    return u, v


def plane_to_voxel(x: float, y: float, axis: int, slice_index: float) -> np.ndarray:
    """Voxel indices ``(i, j, k)`` (float) of in-plane point ``(x, y)`` on slice ``slice_index`` along ``axis``."""
    u, v = plane_axes(axis)
    ijk = np.zeros(3, dtype=np.float64)
    ijk[int(axis)], ijk[u], ijk[v] = float(slice_index), float(x), float(y)
    return ijk


def _world_matrix(affine: np.ndarray, space: str) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}")
    if space == "LPS":
        a = LPS_TO_RAS @ a  # its own inverse: RAS -> LPS too
    return a


def prompt_to_world(prompt: Prompt, affine: np.ndarray, *, space: str = "RAS") -> dict[str, Any]:
    """A source-voxel prompt as a ``world`` prompt-file entry (millimetres in ``space``).

    Args:
        prompt: a prompt in source voxel coordinates with ``slice_index`` and ``axis`` (geometric prompts).
        affine: ``4 x 4`` voxel -> RAS mm of the source image.
        space: ``RAS`` or ``LPS``.

    Raises:
        ValueError: a geometric prompt without ``slice_index``/``axis``.
    """
    _check_choice("space", space, WORLD_SPACES)
    a = _world_matrix(affine, space)
    d: dict[str, Any] = {"class_id": prompt.class_id}
    if prompt.is_automatic:
        return d
    if prompt.slice_index is None or prompt.axis is None:
        raise ValueError("a prompt needs slice_index and axis to be written in world coordinates")

    def world(x: float, y: float) -> list[float]:
        ijk = plane_to_voxel(x, y, prompt.axis, prompt.slice_index)  # type: ignore[arg-type]
        return [round(float(c), 9) for c in a[:3, :3] @ ijk + a[:3, 3]]

    if prompt.points:
        d["points"] = [world(x, y) for x, y in prompt.points]
        d["point_labels"] = list(prompt.point_labels)
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        d["box"] = world(x0, y0) + world(x1, y1)
    d["axis"] = int(prompt.axis)
    return d


def prompt_from_world(
    d: dict[str, Any], affine: np.ndarray, *, default_axis: int = 2, space: str = "RAS"
) -> Prompt:
    """A ``world`` prompt-file entry as a :class:`Prompt` in source voxel coordinates.

    The slice axis is ``d["axis"]`` when given; otherwise the voxel axis along which all the prompt's points and
    box corners share one slice (``default_axis`` when they share several, or for a single point). Every point
    must lie within half a voxel of that slice.

    Raises:
        ValueError: malformed entry, or points that do not lie in one slice.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a prompt must be a JSON object, got {type(d).__name__}")
    known = {"points", "point_labels", "box", "class_id", "axis"}
    unknown = set(d) - known
    if unknown:
        hint = (
            " (slice_index follows from the coordinates in a world file)" if "slice_index" in unknown else ""
        )
        raise ValueError(f"unknown prompt key(s) {sorted(unknown)}; valid keys: {sorted(known)}{hint}")
    a = _world_matrix(affine, space)
    inv = np.linalg.inv(a)
    points = [list(p) for p in d.get("points", [])]
    if any(len(p) != 3 for p in points):
        raise ValueError("a world point must have 3 coordinates [x, y, z] in mm")
    box = d.get("box")
    if box is not None and len(box) != 6:
        raise ValueError(f"a world box must have 6 numbers [x0, y0, z0, x1, y1, z1] in mm, got {len(box)}")
    mm = np.asarray(points + ([list(box[:3]), list(box[3:])] if box is not None else []), dtype=np.float64)
    if mm.size == 0:
        return Prompt(class_id=d.get("class_id", 1))
    if not np.isfinite(mm).all():
        raise ValueError("world coordinates must be finite numbers")
    vox = mm @ inv[:3, :3].T + inv[:3, 3]
    axis = d.get("axis")
    if axis is None:
        spread = vox.max(axis=0) - vox.min(axis=0)
        flat = [ax for ax in range(3) if spread[ax] < 1.0]
        if not flat:
            raise ValueError(
                f"the prompt's points do not lie in one slice (spread {np.round(spread, 2).tolist()} voxels along "
                "the image axes); give 'axis'"
            )
        axis = default_axis if (default_axis in flat or len(vox) == 1) else flat[int(np.argmin(spread[flat]))]
    axis = int(axis)
    u, v = plane_axes(axis)
    index = int(np.round(np.mean(vox[:, axis])))
    off = np.abs(vox[:, axis] - index)
    if (off > _SLICE_TOLERANCE).any():
        raise ValueError(
            f"the prompt's points lie {float(off.max()):.2f} voxels off slice {index} along axis {axis}; they must "
            "share one slice"
        )
    xy = np.round(vox[:, [u, v]], 6)
    n = len(points)
    box_xy = None
    if box is not None:
        c = xy[n:]
        box_xy = (c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max())
    return Prompt(
        points=[(float(p[0]), float(p[1])) for p in xy[:n]],
        point_labels=list(d.get("point_labels", [])),
        box=box_xy,
        class_id=d.get("class_id", 1),
        slice_index=index,
        axis=axis,
    )


def box_from_points(p0: Sequence[float], p1: Sequence[float]) -> tuple[float, float, float, float]:
    """Box with inclusive corners from two clicked points in any order."""
    return (min(p0[0], p1[0]), min(p0[1], p1[1]), max(p0[0], p1[0]), max(p0[1], p1[1]))


def mirror_prompt(prompt: Prompt, width: int) -> Prompt:
    """``prompt`` on the slice mirrored left-right (columns reversed; ``width`` columns)."""

    last = width - 1
    box = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        box = (last - x1, y0, last - x0, y1)
    return dataclasses.replace(prompt, points=[(last - x, y) for x, y in prompt.points], box=box)
