"""Synthetic generator: seeded, fast, labels match the drawn shapes, arguments validated."""

from __future__ import annotations

import time

import numpy as np
import pytest

from salt_seg.data.synthetic import SHAPES_2D, SHAPES_3D, synthetic_2d, synthetic_3d, synthetic_classes


@pytest.mark.parametrize(("fn", "shape"), [(synthetic_2d, (40, 56)), (synthetic_3d, (24, 28, 20))])
def test_shapes_dtypes_ranges_and_determinism(fn, shape):
    img, lab = fn(shape, n_objects=3, seed=4)
    assert img.shape == lab.shape == shape
    assert img.dtype == np.float32 and lab.dtype == np.int16
    assert 0.0 <= img.min() and img.max() <= 1.0
    img2, lab2 = fn(shape, n_objects=3, seed=4)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    assert not np.array_equal(fn(shape, n_objects=3, seed=5)[1], lab)


def test_class_ids_follow_kinds_and_contrast_is_visible():
    counts = np.zeros(4)
    for seed in range(20):
        img, lab = synthetic_2d((64, 64), n_objects=4, noise=0.0, texture=0.0, contrast=0.5, seed=seed)
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        for c in (1, 2, 3):
            if (lab == c).any():
                counts[c] += 1
                assert abs(img[lab == c].mean() - img[lab == 0].mean()) > 0.15
    assert counts[1:].min() > 5
    assert synthetic_classes(SHAPES_2D) == {1: "ellipse", 2: "rectangle", 3: "triangle"}
    _, lab = synthetic_2d((64, 64), n_objects=5, kinds=("triangle",), seed=1)
    assert set(np.unique(lab)) <= {0, 1}


def test_zero_objects_gives_an_empty_label():
    img, lab = synthetic_3d((16, 16, 16), n_objects=0, seed=0)
    assert lab.max() == 0 and img.std() > 0


def test_fast_enough_for_pretraining():
    synthetic_2d((256, 256), seed=0)
    t = time.perf_counter()
    for s in range(20):
        synthetic_2d((256, 256), n_objects=5, seed=s)
    assert (time.perf_counter() - t) / 20 < 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (4, 64)}, "at least 8"),
        ({"kinds": ("hexagon",)}, "kinds must be"),
        ({"size": (0.3, 0.1)}, "size"),
        ({"noise": 2.0}, "noise must be in"),
        ({"n_objects": (3, 1)}, "n_objects range"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_2d(**kwargs)
    assert SHAPES_3D == ("ellipsoid", "cuboid", "cylinder")
