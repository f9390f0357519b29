"""Volume geometry: RAS canonicalisation and its exact inverse, display slices, pixel <-> voxel mapping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from salt_seg.data.errors import DataError
from salt_seg.data.volume import (
    Geometry,
    Volume,
    check_affine,
    extract_slice,
    insert_slice,
    slice_shape,
    slice_to_voxel,
    voxel_to_slice,
)
from salt_seg.io import save_nifti

from .conftest import oblique_affine


def _permuted_affine(perm: tuple[int, int, int], flips: tuple[int, int, int]) -> np.ndarray:
    a = np.zeros((4, 4))
    spacing = (0.5, 1.5, 3.0)
    for i, (ax, f) in enumerate(zip(perm, flips, strict=True)):
        a[ax, i] = f * spacing[i]
    a[:3, 3] = (10.0, -20.0, 5.0)
    a[3, 3] = 1
    return a


ORIENTATIONS = [
    (p, f) for p in itertools.permutations(range(3)) for f in itertools.product((1, -1), repeat=3)
]


@pytest.mark.parametrize(("perm", "flips"), ORIENTATIONS[::5] + [((0, 1, 2), (-1, 1, 1))])
def test_to_ras_points_axes_right_anterior_superior_and_restores_exactly(perm, flips):
    arr = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
    vol = Volume(arr, _permuted_affine(perm, flips))
    ras = vol.to_ras()
    assert ras.axcodes == "RAS"
    # the same voxel keeps the same world position and value
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = vol.voxel_to_world(ijk)
        r_ijk = np.rint(ras.world_to_voxel(world)[0]).astype(int)
        assert np.allclose(ras.voxel_to_world(r_ijk), world)
        assert np.array_equal(ras.array[(slice(None), *r_ijk)], vol.array[(slice(None), *ijk)])
    assert np.array_equal(ras.restore_orientation(ras.array), vol.array)
    assert np.array_equal(ras.restore_orientation(ras.array[0]), vol.array[0])
    assert ras.source_geometry.shape == vol.shape
    assert np.allclose(ras.source_geometry.affine, vol.affine)
    assert ras.source_geometry.to_ras().shape == ras.shape


def test_oblique_volume_stays_oblique_and_round_trips():
    aff = oblique_affine(angle_deg=30)
    aff[:3, 0] *= -1  # LAS-like oblique
    vol = Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), aff)
    ras = vol.to_ras()
    assert ras.axcodes == "RAS"
    assert np.allclose(np.abs(ras.affine[:3, :3]).max(axis=1), np.abs(aff[:3, :3]).max(axis=1))
    assert not np.allclose(ras.affine[:3, :3], np.diag(np.diag(ras.affine[:3, :3])))  # still rotated
    assert np.array_equal(ras.restore_orientation(ras.data), vol.data)
    assert np.allclose(ras.spacing, vol.spacing)


def test_ras_volume_is_shared_not_copied():
    vol = Volume(np.zeros((2, 3, 4)), np.diag([1.0, 2.0, 3.0, 1.0]))
    assert vol.to_ras().array is vol.array
    assert vol.to_ras().to_ras().affine.tolist() == vol.affine.tolist()


def test_source_volume_writes_back_on_the_file_grid(tmp_path):
    vol = Volume(
        np.random.default_rng(1).integers(0, 3, (5, 6, 7)).astype(np.int16),
        _permuted_affine((2, 0, 1), (-1, 1, -1)),
    )
    ras = vol.to_ras()
    back = ras.source_volume(ras.data)
    assert np.array_equal(back.data, vol.data)
    assert np.allclose(back.affine, vol.affine)
    path = save_nifti(tmp_path / "m.nii.gz", back.array[0], back.affine, dtype=np.uint8)
    import nibabel as nib

    img = nib.load(str(path))
    assert np.allclose(img.affine, vol.affine)
    assert np.array_equal(np.asarray(img.dataobj), vol.data)
    assert img.get_data_dtype() == np.uint8


def test_extract_slice_is_radiological_display():
    # RAS volume: i grows to the patient's right, j anterior, k superior.
    shape = (4, 5, 6)
    arr = np.zeros(shape)
    arr[-1, -1, 2] = 1  # most right, most anterior voxel on axial slice 2
    axial = extract_slice(arr, 2, 2)
    assert axial.shape == slice_shape(shape, 2) == (5, 4)
    assert axial[0, 0] == 1  # patient right on the image's left, anterior at the top
    arr[:] = 0
    arr[-1, 1, -1] = 1  # most right and most superior on coronal slice 1
    assert extract_slice(arr, 1, 1)[0, 0] == 1
    arr[:] = 0
    arr[2, -1, -1] = 1  # most anterior and most superior on sagittal slice 2
    assert extract_slice(arr, 0, 2)[0, 0] == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_pixel_voxel_mapping_and_insert_are_consistent(axis):
    rng = np.random.default_rng(axis)
    arr = rng.normal(size=(2, 4, 5, 6))
    n = arr.shape[1 + axis]
    s = extract_slice(arr, axis, n - 1)
    rows, cols = slice_shape(arr.shape, axis)
    assert s.shape == (2, rows, cols)
    for y, x in [(0, 0), (rows - 1, cols - 1), (1, cols - 2)]:
        ijk = slice_to_voxel(arr.shape, axis, n - 1, x, y)
        assert arr[(0, *ijk)] == s[0, y, x]
        assert voxel_to_slice(arr.shape, axis, ijk) == (n - 1, x, y)
    assert slice_to_voxel(arr.shape, axis, 0, 0.4, 0.6) == slice_to_voxel(arr.shape, axis, 0, 0, 1)
    out = np.zeros_like(arr)
    insert_slice(out, axis, n - 1, s)
    assert np.array_equal(np.take(out, n - 1, axis=1 + axis), np.take(arr, n - 1, axis=1 + axis))
    with pytest.raises(ValueError, match="outside"):
        slice_to_voxel(arr.shape, axis, 0, cols, 0)
    with pytest.raises(IndexError):
        extract_slice(arr, axis, n)


def test_two_d_picture_layout_displays_upright():
    img = np.arange(12).reshape(3, 4)  # rows x cols
    # how readers store a picture: i = column, j = row, LPS-style affine
    vol = Volume(img.T[None, :, :, None], np.diag([-1.0, -1.0, 1.0, 1.0]), is_2d=True)
    ras = vol.to_ras()
    assert np.array_equal(extract_slice(ras.array, 2, 0)[0], img)


@pytest.mark.parametrize(
    ("affine", "msg"),
    [
        (np.diag([1.0, 0.0, 1.0, 1.0]), "spacing"),
        (np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "parallel"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.eye(3), "4x4"),
    ],
)
def test_check_affine_rejects_degenerate(affine, msg):
    with pytest.raises(DataError, match=msg) as info:
        check_affine(affine, "scan.nii.gz")
    assert str(info.value).startswith("scan.nii.gz: ")


def test_geometry_from_ras_checks_shape():
    g = Geometry(_permuted_affine((1, 0, 2), (1, 1, 1)), (4, 5, 6))
    assert g.to_ras().shape == (5, 4, 6)
    with pytest.raises(ValueError, match="RAS grid"):
        g.from_ras(np.zeros((4, 5, 6)))
