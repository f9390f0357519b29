"""Rendering: aspect-correct layout, the one display <-> slice pixel mapping, window, overlays and markers."""

from __future__ import annotations

import numpy as np
import pytest

from salt_seg_apps.viewer.render import DisplayGeometry, Markers, edge_letters, render_slice, window_to_uint8


def test_layout_keeps_millimetres_square_and_fits_the_display() -> None:
    g = DisplayGeometry.fit(48, 64, (0.9, 2.5), size=512)
    assert max(g.width, g.height) == 512
    assert g.width / g.height == pytest.approx((64 * 0.9) / (48 * 2.5), rel=0.01)
    small = DisplayGeometry.fit(5, 7, (1.0, 1.0), size=100)
    assert (small.width, small.height) == (100, 71)
    with pytest.raises(ValueError, match="spacing must be positive"):
        DisplayGeometry.fit(5, 5, (0.0, 1.0))


def test_every_display_pixel_maps_to_the_slice_pixel_drawn_there() -> None:
    g = DisplayGeometry.fit(13, 29, (0.7, 3.0), size=200)
    cols, rows = g.column_index(), g.row_index()
    assert cols[0] == 0 and cols[-1] == 28 and rows[0] == 0 and rows[-1] == 12
    assert np.all(np.diff(cols) >= 0) and np.all(np.diff(rows) >= 0)
    for px in range(g.width):
        for py in range(0, g.height, 7):
            assert g.to_slice(px, py) == (cols[px], rows[py])
    assert g.to_slice(-1, 0) is None and g.to_slice(0, g.height) is None
    for x, y in [(0, 0), (28, 12), (14, 6)]:
        assert g.to_slice(*g.to_display(x, y)) == (x, y)


def test_window_maps_level_and_width_to_grey() -> None:
    out = window_to_uint8(np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]]), 40.0, 400.0)
    assert out.tolist() == [[0, 0, 127, 255, 255]]


def test_overlay_tints_labels_draws_outlines_and_respects_opacity() -> None:
    grey = np.full((10, 10), 100, np.uint8)
    labels = np.zeros((10, 10), np.uint16)
    labels[2:8, 2:8] = 1
    g = DisplayGeometry.fit(10, 10, (1.0, 1.0), size=10)
    colours = {1: (255, 0, 0)}
    hidden = render_slice(grey, labels, g, colours=colours, opacity=0.0)
    assert (hidden == 100).all()
    half = render_slice(grey, labels, g, colours=colours, opacity=0.5)
    assert half[5, 5].tolist() == [177, 50, 50]  # inside: 0.5 * grey + 0.5 * red
    assert half[2, 5].tolist() == [255, 0, 0]  # outline at full colour
    assert half[0, 0].tolist() == [100, 100, 100]
    marked = render_slice(
        grey,
        labels,
        DisplayGeometry.fit(10, 10, (1.0, 1.0), 100),
        colours=colours,
        markers=Markers(points=[(5, 5, 1)], boxes=[(1, 1, 8, 8)]),
        letters=edge_letters(2),
    )
    assert tuple(marked[55, 55]) == (40, 220, 80)  # the positive point's green
    assert tuple(marked[10, 25]) == (255, 210, 0)  # the box's top edge


def test_edge_letters() -> None:
    assert edge_letters(2) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert edge_letters(0, "LPS") == {"left": "P", "right": "A", "top": "S", "bottom": "I"}
