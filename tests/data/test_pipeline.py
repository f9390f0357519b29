"""Acceptance 5 (volume pipeline): orientation, resampling, intensity; shapes, dtypes, ranges; exact way back."""

from __future__ import annotations

import numpy as np
import pytest

from salt_seg.data import Volume, extract_slice, prepare_volume
from salt_seg.data.errors import DataError
from salt_seg.data.synthetic import synthetic_3d
from salt_seg.preprocessing import Preprocessing, intensity_range, prepare_slice

LAS = np.array([[-1.0, 0, 0, 30], [0, 1.2, 0, -10], [0, 0, 2.0, 5], [0, 0, 0, 1]])


@pytest.fixture
def las_pair():
    img, lab = synthetic_3d((24, 20, 12), n_objects=4, seed=3)
    hu = (img * 2000 - 1000).astype(np.float32)  # CT-like values in HU
    return Volume(hu, LAS, modality="CT", name="ct"), Volume(lab, LAS, modality="label")


def test_prepared_volume_is_ras_normalised_and_integral(las_pair):
    image, label = las_pair
    rec = Preprocessing(
        intensity="ct", window_level=40, window_width=400, image_size=64, classes={1: "a", 2: "b", 3: "c"}
    )
    prep = prepare_volume(image, rec, label)
    ras = image.to_ras()
    assert prep.image.shape == (1, *ras.shape) and prep.image.dtype == np.float32
    assert 0.0 <= prep.image.min() and prep.image.max() <= 1.0
    assert np.allclose(prep.affine, ras.affine)  # the pipeline's grid is Volume.to_ras's
    assert prep.label.dtype == np.int64 and np.array_equal(prep.label, label.to_ras().data)
    assert prep.value_range == [(-160.0, 240.0)]
    # the CT window maps HU as the record says: -160 -> 0, 40 -> 0.5, 240 -> 1
    expected = np.clip((ras.data - -160.0) / 400.0, 0, 1)
    assert np.allclose(prep.image[0], expected, atol=1e-6)
    assert prep.n_slices == ras.shape[2]


def test_model_input_goes_through_the_record(las_pair):
    image, _ = las_pair
    rec = Preprocessing(intensity="ct", image_size=64)
    prep = prepare_volume(image, rec)
    x, tf = prep.model_input(5)
    raw_slice = extract_slice(image.to_ras().data, 2, 5)
    ref, ref_tf = prepare_slice(raw_slice, rec, intensity_range(image.data, rec))
    assert tf == ref_tf and tf.original_size == raw_slice.shape
    assert x.shape == (3, 64, 64) and x.dtype.is_floating_point
    assert np.allclose(x.numpy(), ref.numpy(), atol=1e-4)


def test_mr_percentiles_once_per_volume(las_pair):
    image, _ = las_pair
    rec = Preprocessing(intensity="mr", percentiles=(0.5, 99.5), image_size=32)
    prep = prepare_volume(image, rec)
    lo, hi = np.percentile(image.data, (0.5, 99.5))
    assert prep.value_range[0] == pytest.approx((lo, hi))
    assert (prep.image == 0).mean() >= 0.004 and (prep.image == 1).mean() >= 0.004


def test_to_source_is_exact_without_resampling(las_pair):
    image, label = las_pair
    prep = prepare_volume(image, Preprocessing(image_size=32, classes={1: "a", 2: "b", 3: "c"}), label)
    assert np.array_equal(prep.to_source(prep.label), label.data)


def test_in_plane_resampling_keeps_labels_integral_and_maps_back(las_pair):
    image, label = las_pair
    rec = Preprocessing(image_size=32, spacing=0.5, classes={1: "a", 2: "b", 3: "c"})
    prep = prepare_volume(image, rec, label)
    ras = image.to_ras()
    # MONAI keeps the extent between the first and last voxel centres: (n - 1) * spacing / 0.5 + 1
    assert prep.image.shape[1:3] == (47, 47) and prep.image.shape[3] == ras.shape[2]
    assert np.allclose(np.linalg.norm(prep.affine[:3, :3], axis=0), (0.5, 0.5, 2.0))
    assert set(np.unique(prep.label)) <= {0, 1, 2, 3}
    back = prep.to_source(prep.label)
    assert back.shape == label.shape
    assert (back == label.data).mean() > 0.97


def test_record_channels_pick_source_channels():
    rng = np.random.default_rng(0)
    arr = np.stack([rng.normal(size=(6, 6, 4)), 100 + rng.normal(size=(6, 6, 4))]).astype(np.float32)
    vol = Volume(arr, np.eye(4))
    prep = prepare_volume(vol, Preprocessing(intensity="minmax", channels=[1, 0], image_size=32))
    assert prep.image.shape == (2, 6, 6, 4)
    assert prep.value_range[0][0] > 90 and prep.value_range[1][1] < 10
    x, _ = prep.model_input(0)
    assert x.shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"preprocessing channels \[2\] but the image has 2 channel"):
        prepare_volume(vol, Preprocessing(channels=[2], image_size=32))


def test_two_d_picture_slices_along_axis_2_whatever_the_record_axis(tmp_path):
    from salt_seg.data import load_volume

    from .conftest import write_picture

    pic = np.zeros((20, 30, 3), np.uint8)
    pic[2:6, 20:28] = 255
    vol = load_volume(write_picture(tmp_path / "p.png", pic))
    prep = prepare_volume(vol, Preprocessing(intensity="minmax", channels=[0, 1, 2], axis=0, image_size=32))
    assert prep.axis == 2 and prep.n_slices == 1
    s = prep.slice_image(0)
    assert s.shape == (3, 20, 30) and np.array_equal(s[0] > 0.5, pic[..., 0] > 0)


@pytest.mark.parametrize("preset", ["soft_tissue", "lung", "bone", "brain"])
def test_ct_window_presets(las_pair, preset):
    from salt_seg.preprocessing import window_preset

    image, _ = las_pair
    level, width = window_preset(preset)
    prep = prepare_volume(
        image, Preprocessing(intensity="ct", window_level=level, window_width=width, image_size=32)
    )
    lo, hi = prep.value_range[0]
    assert (lo, hi) == (level - width / 2, level + width / 2)
    inside = (image.to_ras().data > lo) & (image.to_ras().data < hi)
    assert np.allclose(prep.image[0][inside], (image.to_ras().data[inside] - lo) / width, atol=1e-5)


def _grid(perm, flips, spacing=(0.8, 1.3, 2.5), angle_deg=0.0, lps=False):
    """An affine with permuted/flipped voxel axes, anisotropic voxels, optionally oblique or given in LPS."""
    from salt_seg.geometry import LPS_TO_RAS

    from .conftest import oblique_affine

    aff = oblique_affine(spacing=spacing, angle_deg=angle_deg)
    aff[:3, :3] = aff[:3, list(perm)] * flips
    return LPS_TO_RAS @ aff if lps else aff


GRIDS = [
    ((0, 1, 2), (1, 1, 1), 0.0, False),
    ((0, 1, 2), (-1, 1, 1), 0.0, False),  # LAS
    ((0, 1, 2), (1, 1, 1), 0.0, True),  # an LPS (DICOM/ITK) grid
    ((2, 0, 1), (-1, 1, -1), 35.0, False),  # permuted, flipped, oblique
    ((1, 2, 0), (1, -1, 1), 20.0, True),
    ((2, 1, 0), (-1, -1, -1), 10.0, True),
]


@pytest.mark.parametrize(("perm", "flips", "angle", "lps"), GRIDS)
def test_prepared_grid_and_to_source_are_exact_inverses(perm, flips, angle, lps):
    """Forward (source -> RAS grid) and back (``to_source``) go through the same Geometry mapping: exact."""
    aff = _grid(perm, flips, angle_deg=angle, lps=lps)
    arr = np.random.default_rng(1).integers(0, 4, (5, 6, 7)).astype(np.int16)
    vol = Volume(arr.astype(np.float32) / 3, aff)  # in [0, 1]: intensity "none" keeps the values
    prep = prepare_volume(
        vol,
        Preprocessing(intensity="none", image_size=32, classes={1: "a", 2: "b", 3: "c"}),
        Volume(arr, aff),
    )
    ras = Volume(arr, aff).to_ras()
    assert ras.axcodes == "RAS"  # an oblique grid points as near R, A, S as it can
    assert np.array_equal(prep.affine, ras.affine) and np.array_equal(prep.label, ras.data)
    assert np.array_equal(prep.image[0], vol.to_ras().data)
    # every voxel keeps its world position
    ijk = np.argwhere(np.ones(arr.shape, bool))
    back = np.rint(ras.world_to_voxel(vol.voxel_to_world(ijk))).astype(int)
    assert np.array_equal(ras.data[tuple(back.T)], arr[tuple(ijk.T)])
    assert np.array_equal(prep.to_source(prep.label), arr)
    probs = np.random.default_rng(2).random(prep.label.shape).astype(np.float32)
    assert np.array_equal(vol.geometry.into_ras(prep.to_source(probs, order=1)), probs)


@pytest.mark.parametrize(("perm", "flips", "angle", "lps"), GRIDS)
@pytest.mark.parametrize("axis", [0, 2])
def test_resampled_grid_maps_back_exactly_when_it_refines_the_source(perm, flips, angle, lps, axis):
    """In-plane spacing half the source's: every source voxel centre is a prepared voxel centre, so the way
    back (same resampler, nearest for labels, linear for probabilities) returns the source values exactly."""
    aff = _grid(perm, flips, spacing=(2.0, 2.0, 2.0), angle_deg=angle, lps=lps)
    lab = np.random.default_rng(3).integers(0, 4, (5, 6, 7)).astype(np.int16)
    rec = Preprocessing(
        intensity="none", image_size=32, spacing=1.0, axis=axis, classes={1: "a", 2: "b", 3: "c"}
    )
    prep = prepare_volume(Volume(lab.astype(np.float32) / 3, aff), rec, Volume(lab, aff))
    ras = Volume(lab, aff).to_ras()
    expect = [2 * n - 1 if d != axis else n for d, n in enumerate(ras.shape)]
    assert list(prep.label.shape) == expect
    assert np.allclose(
        np.linalg.norm(prep.affine[:3, :3], axis=0), [2.0 if d == axis else 1.0 for d in range(3)]
    )
    every_other = tuple(slice(None, None, 2) if d != axis else slice(None) for d in range(3))
    assert np.array_equal(prep.label[every_other], ras.data)  # source voxel centres keep their values
    assert np.array_equal(prep.to_source(prep.label), lab)
    assert np.allclose(prep.to_source(prep.image[0], order=1), lab / 3, atol=1e-6)


def test_to_source_refuses_unknown_interpolation_orders(las_pair):
    image, _ = las_pair
    prep = prepare_volume(image, Preprocessing(image_size=32, spacing=0.5))
    with pytest.raises(ValueError, match="order must be one of"):
        prep.to_source(prep.image[0], order=3)


def test_only_ras_is_a_pipeline_orientation():
    with pytest.raises(ValueError, match="orientation"):
        Preprocessing(orientation="LPS")
