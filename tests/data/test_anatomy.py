"""Synthetic anatomy generator: seeded, labels contiguous, thin/nested/adjacent structures, intensities follow labels."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
from scipy import ndimage

from salt_seg.data import anatomy
from salt_seg.data.anatomy import AnatomyParams, anatomy_classes, heldout_anatomy, synthetic_anatomy_2d

SMALL = AnatomyParams(shape=(128, 128))


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """20 default samples at 256 x 256 (shared: generating them is most of this file's time)."""
    return [synthetic_anatomy_2d(AnatomyParams(), seed) for seed in range(20)]


def _touching_pairs(label: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of structures (background excluded) sharing a 4-connected boundary."""
    pairs = set()
    for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1, :], label[1:, :])):
        d = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(np.minimum(a[d], b[d]).tolist(), np.maximum(a[d], b[d]).tolist(), strict=True))
    return pairs


def test_same_seed_same_sample_and_seeds_differ():
    img, lab = synthetic_anatomy_2d(SMALL, 7)
    img2, lab2 = synthetic_anatomy_2d(SMALL, 7)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    img3, lab3 = synthetic_anatomy_2d(SMALL, np.random.default_rng(7))  # a generator seeded alike: the same
    assert np.array_equal(img, img3) and np.array_equal(lab, lab3)
    img4, lab4 = synthetic_anatomy_2d(SMALL, 8)
    assert not np.array_equal(lab, lab4) and not np.allclose(img, img4)
    # a generator is consumed: two draws from it differ
    rng = np.random.default_rng(3)
    assert not np.array_equal(synthetic_anatomy_2d(SMALL, rng)[1], synthetic_anatomy_2d(SMALL, rng)[1])


@pytest.mark.parametrize("shape", [(256, 256), (96, 160), (32, 32)])
def test_dtypes_ranges_shapes(shape):
    for seed in range(3):
        img, lab = synthetic_anatomy_2d(AnatomyParams(shape=shape), seed)
        assert img.shape == lab.shape == shape
        assert img.dtype == np.float32 and lab.dtype == np.int64
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        assert img.max() - img.min() > 0.5  # normalised: uses the range
        assert lab.min() == 0  # background around the body somewhere


def test_labels_contiguous_and_count_in_range(samples):
    ks = []
    for _, lab in samples:
        k = int(lab.max())
        assert anatomy_classes(lab) == list(range(1, k + 1))
        counts = np.bincount(lab.ravel())
        assert counts[1:].min() >= AnatomyParams().min_pixels  # small structures were merged away
        ks.append(k)
    assert min(ks) >= 4 and max(ks) <= 16
    assert len(set(ks)) >= 5  # K varies
    for seed in range(10):
        k = synthetic_anatomy_2d(AnatomyParams(shape=(128, 128), n_labels=(6, 8)), seed)[1].max()
        assert 6 <= k <= 8
    assert synthetic_anatomy_2d(AnatomyParams(shape=(64, 64), n_labels=(12, 12)), 0)[1].max() == 12


def test_thin_structures_in_most_samples(samples):
    # a structure at most ~6 px thick everywhere: its largest distance to its own outside is <= 3 px
    thin = 0
    for _, lab in samples:
        thickness = [
            ndimage.distance_transform_edt(np.pad(lab == k, 1)).max() for k in range(1, lab.max() + 1)
        ]
        thin += min(thickness) <= 3.0
    assert thin >= 14


def test_structures_span_small_to_large(samples):
    both = 0
    for _, lab in samples:
        extents = [
            max(s.stop - s.start for s in box) / lab.shape[0] for box in ndimage.find_objects(lab) if box
        ]
        both += min(extents) <= 0.1 and max(extents) >= 0.4
    assert both >= 16


def test_structures_share_boundaries(samples):
    connected, many = 0, []
    for _, lab in samples:
        k = int(lab.max())
        pairs = _touching_pairs(lab)
        connected += len(pairs) >= k - 1
        many.append(len(pairs) / k)
    assert connected >= 16
    assert np.mean(many) >= 1.5  # on average each structure touches 3 others


def test_intensity_follows_labels_without_noise_and_bias():
    p = AnatomyParams(shape=(128, 128), noise_std=(0.0, 0.0), bias_strength=0.0)
    distinct, explained = 0, 0
    for seed in range(20):
        img, lab = synthetic_anatomy_2d(p, seed)
        k = int(lab.max())
        means = np.asarray(ndimage.mean(img, lab, np.arange(k + 1)))
        gaps = np.abs(means[1:, None] - means[None, 1:])[np.triu_indices(k, 1)]
        distinct += np.mean(gaps > 0.01) >= 0.8  # most pairs of structures differ in mean intensity
        explained += (
            1 - np.mean((img - means[lab]) ** 2) / img.var() > 0.7
        )  # the label map explains the image
    assert distinct >= 16 and explained >= 16


def test_contrast_modes_and_artefacts_are_drawn():
    # CT-only and MR-only runs both work and differ; the artefact-free image is piecewise near-constant
    ct = synthetic_anatomy_2d(AnatomyParams(shape=(64, 64), ct_prob=1.0), 1)[0]
    mr = synthetic_anatomy_2d(AnatomyParams(shape=(64, 64), ct_prob=0.0), 1)[0]
    assert not np.allclose(ct, mr)
    clean = AnatomyParams(
        shape=(128, 128),
        noise_std=(0.0, 0.0),
        bias_strength=0.0,
        blur_sigma=(0.0, 0.0),
        downsample=(1.0, 1.0),
        intensity_std=(0.0, 0.0),
    )
    img, lab = synthetic_anatomy_2d(clean, 2)
    for k in range(lab.max() + 1):
        assert np.ptp(img[lab == k]) < 1e-5  # no texture, no bias, no noise: one value per label
    noisy = AnatomyParams(shape=(128, 128), noise_std=(0.08, 0.08), intensity_std=(0.0, 0.0))
    img, lab = synthetic_anatomy_2d(noisy, 2)
    assert max(img[lab == k].std() for k in range(lab.max() + 1)) > 0.02


def test_heldout_set_is_fixed():
    a = heldout_anatomy(3, params=SMALL)
    b = heldout_anatomy(3, params=SMALL)
    assert len(a) == 3 and all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    img, lab = synthetic_anatomy_2d(SMALL, np.random.default_rng([anatomy.HELDOUT_SEED, 2]))
    assert np.array_equal(a[2][0], img) and np.array_equal(a[2][1], lab)
    assert not np.array_equal(heldout_anatomy(1, seed=5, params=SMALL)[0][1], a[0][1])
    assert heldout_anatomy(0) == []
    with pytest.raises(ValueError, match="n must be"):
        heldout_anatomy(-1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shape": (16, 256)}, "shape"),
        ({"shape": (256,)}, "shape"),
        ({"n_labels": (5, 3)}, "n_labels"),
        ({"n_labels": (0, 3)}, "n_labels"),
        ({"n_labels": (2.5, 3)}, "n_labels"),
        ({"body_area": (0.4, 1.5)}, "body_area"),
        ({"shell_width": 3.0}, "shell_width"),
        ({"shell_prob": 1.5}, "shell_prob"),
        ({"cortex_width": (0.5, 2.0)}, "cortex_width"),
        ({"ribbon_width": (4.0, 1.0)}, "ribbon_width"),
        ({"nucleus_size": (0.0, 0.1)}, "nucleus_size"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"rotation": -1.0}, "rotation"),
        ({"bias_strength": 1.0}, "bias_strength"),
        ({"noise_std": (-0.1, 0.1)}, "noise_std"),
        ({"gamma": (0.0, 1.0)}, "gamma"),
        ({"ct_prob": "high"}, "ct_prob"),
        ({"min_pixels": 0}, "min_pixels"),
        ({"width_scale": 0.0}, "width_scale"),
    ],
)
def test_parameter_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"AnatomyParams\.{field}\b"):
        AnatomyParams(**kwargs)


def _imports(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {m if m.startswith("salt_seg") else m.split(".")[0] for m in imported}


def test_no_real_data_only_numpy_and_scipy():
    from salt_seg.data import synthetic

    allowed = {"__future__", "math", "dataclasses", "functools", "collections", "numpy", "scipy"}
    # the one project module it uses is the synthetic-shapes generator's interpolation, itself numpy only
    assert _imports(anatomy) <= allowed | {"salt_seg.data.synthetic"}
    assert _imports(synthetic) <= allowed
