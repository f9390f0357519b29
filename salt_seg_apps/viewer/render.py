"""Drawing one slice for the screen: window/level, aspect correction, label overlays, prompt markers, letters.

The picture is built in *display pixels*: a slice of ``rows x cols`` voxels (``slice[y, x]``, radiological
orientation from :func:`salt_seg.data.volume.extract_slice`) is drawn ``width x height`` pixels large with
``sx = width / cols`` and ``sy = height / rows`` chosen from the in-plane spacing, so one millimetre spans the
same number of pixels across and down (anisotropic voxels look right). :class:`DisplayGeometry` is the one place
that maps between the two, and the renderer uses exactly the mapping the click handler inverts: display pixel
``X`` shows slice column ``floor((X + 0.5) / sx)``.

Orientation letters follow the RAS grid the viewer slices (:mod:`salt_seg.data.volume`): the edge a voxel axis
grows towards carries that axis's letter (``R``, ``A``, ``S``), the opposite edge the opposite letter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

#: longest side of the drawn slice in pixels (small slices are enlarged to this, large ones reduced).
DEFAULT_DISPLAY_SIZE = 512
_POSITIVE = (40, 220, 80)
_NEGATIVE = (240, 60, 60)
_BOX = (255, 210, 0)
_MARGIN_GREY = 32
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class DisplayGeometry:
    """How a ``rows x cols`` slice is laid out on screen.

    Attributes:
        rows: slice rows (voxels).
        cols: slice columns (voxels).
        width: drawn width of the slice in pixels.
        height: drawn height of the slice in pixels.
        margin: a dark band of this many pixels around the slice, where the orientation letters go (so they never
            cover the anatomy); display pixels count from the band's outer corner.
    """

    rows: int
    cols: int
    width: int
    height: int
    margin: int = 0

    @classmethod
    def fit(
        cls,
        rows: int,
        cols: int,
        spacing_xy: tuple[float, float],
        size: int = DEFAULT_DISPLAY_SIZE,
        margin: int = 0,
    ) -> DisplayGeometry:
        """Fit the slice's physical extent (``cols * dx`` by ``rows * dy`` mm) into ``size`` pixels.

        Args:
            rows: slice rows.
            cols: slice columns.
            spacing_xy: millimetres per column step and per row step.
            size: longest drawn side of the slice in pixels (the margin comes on top).
            margin: band around the slice for the orientation letters, in pixels.
        """
        if rows < 1 or cols < 1:
            raise ValueError(f"slice size must be positive, got {rows} x {cols}")
        dx, dy = (float(s) for s in spacing_xy)
        if not (dx > 0 and dy > 0):
            raise ValueError(f"spacing must be positive, got {spacing_xy}")
        scale = size / max(cols * dx, rows * dy)  # pixels per mm
        w, h = max(1, round(cols * dx * scale)), max(1, round(rows * dy * scale))
        return cls(rows, cols, w, h, max(0, int(margin)))

    @property
    def canvas_width(self) -> int:
        """Width of the whole picture (slice and margins)."""
        return self.width + 2 * self.margin

    @property
    def canvas_height(self) -> int:
        return self.height + 2 * self.margin

    @property
    def sx(self) -> float:
        """Drawn pixels per slice column."""
        return self.width / self.cols

    @property
    def sy(self) -> float:
        """Drawn pixels per slice row."""
        return self.height / self.rows

    def column_index(self) -> np.ndarray:
        """``width`` slice columns, one per drawn pixel column (nearest neighbour)."""
        return np.minimum(((np.arange(self.width) + 0.5) / self.sx).astype(np.int64), self.cols - 1)

    def row_index(self) -> np.ndarray:
        """``height`` slice rows, one per drawn pixel row."""
        return np.minimum(((np.arange(self.height) + 0.5) / self.sy).astype(np.int64), self.rows - 1)

    def to_slice(self, px: float, py: float) -> tuple[int, int] | None:
        """Slice pixel ``(x, y)`` drawn at display pixel ``(px, py)`` (a click), or ``None`` outside the slice."""
        px, py = px - self.margin, py - self.margin
        if not (0 <= px < self.width and 0 <= py < self.height):
            return None
        x = min(int((math.floor(px) + 0.5) / self.sx), self.cols - 1)
        y = min(int((math.floor(py) + 0.5) / self.sy), self.rows - 1)
        return x, y

    def to_display(self, x: float, y: float) -> tuple[float, float]:
        """Display coordinates of the centre of slice pixel ``(x, y)`` (markers)."""
        return (x + 0.5) * self.sx + self.margin, (y + 0.5) * self.sy + self.margin


def window_to_uint8(slice_2d: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map intensities to grey levels: ``level - width/2 -> 0``, ``level + width/2 -> 255``, clipped."""
    width = max(float(width), 1e-6)
    lo = float(level) - width / 2.0
    out = (np.asarray(slice_2d, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def edge_letters(axis: int, axcodes: str = "RAS") -> dict[str, str]:
    """Letters for the ``left``, ``right``, ``top`` and ``bottom`` edges of a display slice along ``axis``.

    ``axcodes`` names the direction each voxel axis grows towards (``"RAS"`` after ``to_ras``). In display
    orientation column ``x`` runs against the first in-plane axis and row ``y`` against the second, so the left
    and top edges carry those axes' own letters.
    """
    u, v = (d for d in range(3) if d != axis)
    cu, cv = axcodes[u], axcodes[v]
    return {"left": cu, "right": _OPPOSITE[cu], "top": cv, "bottom": _OPPOSITE[cv]}


@dataclass
class Markers:
    """Prompt glyphs to draw, in slice pixels.

    Attributes:
        points: ``(x, y, label)`` with label 1 (positive, green) or 0 (negative, red).
        boxes: inclusive ``(x0, y0, x1, y1)`` boxes.
        corner: the first corner of a box being drawn, or ``None``.
    """

    points: list[tuple[float, float, int]] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    corner: tuple[float, float] | None = None


@lru_cache(maxsize=4)
def _font(size: int):  # -> PIL.ImageFont
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _blend(
    rgb: np.ndarray, labels: np.ndarray, colours: Mapping[int, tuple[int, int, int]], alpha: float
) -> None:
    """Tint labelled pixels by ``alpha`` and draw each label's outline at full colour (in place)."""
    if not labels.any():
        return
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    for cid in np.unique(labels):
        if cid == 0:
            continue
        colour = np.asarray(colours.get(int(cid), (255, 255, 255)), dtype=np.float32)
        inside = labels == cid
        rgb[inside] = (1.0 - alpha) * rgb[inside] + alpha * colour
        rgb[inside & edge] = colour


def render_slice(
    grey: np.ndarray,
    labels: np.ndarray | None,
    geometry: DisplayGeometry,
    *,
    colours: Mapping[int, tuple[int, int, int]],
    opacity: float = 0.5,
    markers: Markers | None = None,
    letters: Mapping[str, str] | None = None,
) -> np.ndarray:
    """The picture of one slice.

    Args:
        grey: ``rows x cols`` uint8 (after :func:`window_to_uint8`).
        labels: ``rows x cols`` integer label ids aligned with ``grey`` (0 = none), or ``None``.
        geometry: the layout (:meth:`DisplayGeometry.fit`).
        colours: label id -> RGB.
        opacity: overlay opacity in ``[0, 1]`` (0 hides fills and outlines).
        markers: prompt points and boxes to draw.
        letters: edge letters (:func:`edge_letters`).

    Returns:
        ``canvas_height x canvas_width x 3`` uint8 RGB (the slice inside its margin).
    """
    if grey.shape != (geometry.rows, geometry.cols):
        raise ValueError(f"slice shape {grey.shape} != geometry {(geometry.rows, geometry.cols)}")
    ys, xs = geometry.row_index(), geometry.column_index()
    rgb = np.repeat(grey[ys][:, xs][..., None], 3, axis=2).astype(np.float32)
    if labels is not None and opacity > 0:
        _blend(rgb, np.asarray(labels)[ys][:, xs], colours, float(np.clip(opacity, 0.0, 1.0)))
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if geometry.margin:
        m = geometry.margin
        out = np.pad(out, ((m, m), (m, m), (0, 0)), constant_values=_MARGIN_GREY)
    if markers is None and not letters:
        return out
    from PIL import Image, ImageDraw

    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    scale = max(3.0, min(geometry.width, geometry.height) / 90.0)
    if markers is not None:
        _draw_markers(draw, markers, geometry, scale)
    if letters:
        _draw_letters(draw, letters, geometry)
    return np.asarray(img)


def _draw_markers(draw, markers: Markers, geometry: DisplayGeometry, r: float) -> None:  # noqa: ANN001
    for x0, y0, x1, y1 in markers.boxes:
        m = geometry.margin
        a = (x0 * geometry.sx + m, y0 * geometry.sy + m)
        b = ((x1 + 1) * geometry.sx - 1 + m, (y1 + 1) * geometry.sy - 1 + m)
        draw.rectangle([a, b], outline=_BOX, width=2)
    for x, y, label in markers.points:
        cx, cy = geometry.to_display(x, y)
        colour = _POSITIVE if label == 1 else _NEGATIVE
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=(0, 0, 0), width=1)
    if markers.corner is not None:
        cx, cy = geometry.to_display(*markers.corner)
        draw.line([cx - 2 * r, cy, cx + 2 * r, cy], fill=_BOX, width=2)
        draw.line([cx, cy - 2 * r, cx, cy + 2 * r], fill=_BOX, width=2)


def _draw_letters(draw, letters: Mapping[str, str], geometry: DisplayGeometry) -> None:  # noqa: ANN001
    w, h, m = geometry.canvas_width, geometry.canvas_height, geometry.margin
    if m:  # centred in the band around the slice, off the anatomy
        font = _font(max(8, int(m * 0.8)))
        spots = {
            "left": (m / 2, h / 2, "mm"),
            "right": (w - m / 2, h / 2, "mm"),
            "top": (w / 2, m / 2, "mm"),
            "bottom": (w / 2, h - m / 2, "mm"),
        }
    else:
        font, e = _font(max(10, min(w, h) // 22)), 4
        spots = {
            "left": (e, h / 2, "lm"),
            "right": (w - e, h / 2, "rm"),
            "top": (w / 2, e, "mt"),
            "bottom": (w / 2, h - e, "mb"),
        }
    for edge, (x, y, anchor) in spots.items():
        if edge in letters:
            draw.text(
                (x, y),
                letters[edge],
                fill=(255, 255, 0),
                font=font,
                anchor=anchor,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )


def markers_for(prompts: Iterable[object], corner: tuple[float, float] | None = None) -> Markers:
    """:class:`Markers` for :class:`~salt_seg.prompts.Prompt` objects (their points and boxes)."""
    m = Markers(corner=corner)
    for p in prompts:
        m.points += [(x, y, lab) for (x, y), lab in zip(p.points, p.point_labels, strict=True)]  # type: ignore[attr-defined]
        if p.box is not None:  # type: ignore[attr-defined]
            m.boxes.append(p.box)  # type: ignore[attr-defined]
    return m
