"""Acceptance 4 (prompts): every box contains its mask; points fall inside/outside as labelled."""

from __future__ import annotations

import numpy as np
import pytest

from salt_seg.data.prompts_sim import SIM_MODES, mask_box, simulate_prompt, simulate_prompts
from salt_seg.data.synthetic import synthetic_2d
from salt_seg.prompts import Prompt


def _masks(n=60):
    for seed in range(n):
        _, label = synthetic_2d((48, 64), n_objects=(1, 4), seed=seed)
        for c in np.unique(label):
            if c:
                yield label == c


@pytest.mark.parametrize("mode", ["box", "box+points", "mixed"])
def test_every_box_contains_its_mask_and_stays_in_the_slice(mode):
    rng = np.random.default_rng(0)
    n = 0
    for mask in _masks():
        p = simulate_prompt(mask, 2, mode, rng, box_jitter=0.3, max_jitter_px=8)
        if p.box is None:
            continue
        x0, y0, x1, y1 = p.box
        ys, xs = np.nonzero(mask)
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        assert 0 <= x0 and 0 <= y0 and x1 <= mask.shape[1] - 1 and y1 <= mask.shape[0] - 1
        tight = mask_box(mask)
        assert x0 >= tight[0] - 8 and x1 <= tight[2] + 8  # jitter cap in pixels
        n += 1
    assert n > 50


def test_points_fall_inside_or_outside_as_labelled():
    rng = np.random.default_rng(1)
    seen = {0: 0, 1: 0}
    for mask in _masks():
        p = simulate_prompt(mask, 1, "points", rng, n_positive=3, n_negative=2)
        assert p.box is None and len(p.points) == len(p.point_labels)
        for (x, y), lab in zip(p.points, p.point_labels, strict=True):
            assert float(x).is_integer() and float(y).is_integer()
            assert bool(mask[int(y), int(x)]) == bool(lab)  # x = column, y = row
            seen[lab] += 1
    assert seen[0] > 100 and seen[1] > 100


def test_interior_points_prefer_the_middle():
    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:50] = True
    rng = np.random.default_rng(2)
    dists = []
    for _ in range(200):
        ((x, y),) = simulate_prompt(mask, 1, "points", rng, interior=True).points
        dists.append(min(x - 10, 49 - x, y - 10, 49 - y))
    assert np.mean(dists) > 8  # uniform sampling would give about 6.7


def test_empty_slices_are_explicit():
    empty = np.zeros((10, 12), np.uint8)
    for mode in ("box", "points", "box+points", "mixed"):
        assert simulate_prompt(empty, 3, mode, 0) is None
    token = simulate_prompt(empty, 3, "auto", 0, slice_index=4, axis=2)
    assert isinstance(token, Prompt) and token.is_automatic and token.class_id == 3
    assert token.slice_index == 4 and token.axis == 2
    assert simulate_prompt(empty, 3, "none", 0).is_automatic


def test_per_class_prompts_and_determinism():
    _, label = synthetic_2d((64, 64), n_objects=4, seed=5)
    out = simulate_prompts(label, [1, 2, 3], "box", rng=9)
    present = set(np.unique(label)) - {0}
    assert {c for c, p in out.items() if p is not None} == present
    assert simulate_prompts(label, [1, 2, 3], "box", rng=9) == out
    for c, p in out.items():
        if p is not None:
            assert p.class_id == c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "lasso"}, "unknown prompt mode"),
        ({"class_id": 0}, "class_id must be >= 1"),
        ({"n_negative": -1}, "must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_prompt(np.ones((4, 4)), **{"class_id": 1, "mode": "box", **kwargs})
    with pytest.raises(ValueError, match="H x W"):
        simulate_prompt(np.ones((2, 4, 4)), 1, "box")
    assert "mixed" in SIM_MODES
