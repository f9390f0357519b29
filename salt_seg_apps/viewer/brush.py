"""Brush geometry: the pixels a brush stroke covers on a slice (a disc per click, a swept disc per drag)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stroke_mask(shape: tuple[int, int], points: Sequence[tuple[float, float]], radius: float) -> np.ndarray:
    """``rows x cols`` bool mask of a disc of ``radius`` slice pixels swept along ``points`` (slice ``(x, y)``).

    One point stamps one disc; consecutive points are joined, so a fast drag leaves no gaps. A pixel is inside
    when its centre lies within ``radius`` of the polyline (radius 0: the pixels the line passes through).

    Raises:
        ValueError: no points, or a negative radius.
    """
    if not len(points):
        raise ValueError("a brush stroke needs at least one point")
    if radius < 0:
        raise ValueError(f"brush radius must be >= 0, got {radius}")
    rows, cols = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r = float(radius)
    out = np.zeros(shape, dtype=bool)
    segments = list(zip(pts[:-1], pts[1:], strict=True)) or [(pts[0], pts[0])]
    for a, b in segments:
        x0, x1 = int(np.floor(min(a[0], b[0]) - r)), int(np.ceil(max(a[0], b[0]) + r))
        y0, y1 = int(np.floor(min(a[1], b[1]) - r)), int(np.ceil(max(a[1], b[1]) + r))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cols - 1), min(y1, rows - 1)
        if x0 > x1 or y0 > y1:
            continue
        yy, xx = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
        d = b - a
        length2 = float(d @ d)
        t = (
            np.zeros_like(xx)
            if length2 == 0
            else np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / length2, 0, 1)
        )
        dist2 = (xx - (a[0] + t * d[0])) ** 2 + (yy - (a[1] + t * d[1])) ** 2
        out[y0 : y1 + 1, x0 : x1 + 1] |= dist2 <= max(r * r, 0.25 if length2 else 0.0)
    return out
