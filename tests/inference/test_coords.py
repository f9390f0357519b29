"""Prompts between source voxels and the model's slices, for every orientation (mirrors inference/coords.py)."""

from __future__ import annotations

import numpy as np
import pytest

from salt_seg.data import Volume, prepare_volume, slice_to_voxel
from salt_seg.inference import prepared_slice_to_source, prompt_to_prepared, prompt_to_source, source_axis
from salt_seg.preprocessing import Preprocessing
from salt_seg.prompts import Prompt, plane_to_voxel
from tests.inference.conftest import AFFINES


def prepared_for(kind: str, shape=(20, 16, 9), **record):
    vol = Volume(np.zeros(shape, np.float32), AFFINES[kind])
    return prepare_volume(vol, Preprocessing(image_size=32, **record))


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_points_land_on_the_same_world_position(kind: str) -> None:
    prepared = prepared_for(kind)
    axis = source_axis(prepared)
    src = prepared.source
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(src.shape[axis]))
        others = [d for d in range(3) if d != axis]
        x, y = (int(rng.integers(src.shape[d])) for d in others)
        p = prompt_to_prepared(Prompt(points=[(x, y)], point_labels=[1], slice_index=k, axis=axis), prepared)
        ((px, py),) = p.points
        assert p.axis == prepared.axis and px == int(px) and py == int(py)
        ijk = slice_to_voxel(prepared.image.shape, prepared.axis, p.slice_index, px, py)
        world_model = prepared.affine @ np.array([*ijk, 1.0])
        world_src = src.affine @ np.array([*plane_to_voxel(x, y, axis, k), 1.0])
        np.testing.assert_allclose(world_model, world_src, atol=1e-6)
        assert prepared_slice_to_source(prepared, p.slice_index) == k


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_boxes_round_trip_and_cover_the_same_voxels(kind: str) -> None:
    prepared = prepared_for(kind)
    axis = source_axis(prepared)
    box = Prompt(box=(2, 3, 7, 5), class_id=2, slice_index=4, axis=axis)
    mapped = prompt_to_prepared(box, prepared)
    assert prompt_to_source(mapped, prepared) == box
    # the voxels inside the mapped display box are exactly the source box's voxels
    marker = np.zeros(prepared.source.shape, np.int16)
    idx = [slice(None)] * 3
    others = [d for d in range(3) if d != axis]
    idx[axis] = 4
    idx[others[0]] = slice(2, 8)
    idx[others[1]] = slice(3, 6)
    marker[tuple(idx)] = 1
    ras = Volume(marker, prepared.source.affine).to_ras().data
    from salt_seg.data import extract_slice

    sl = extract_slice(ras, prepared.axis, mapped.slice_index)
    x0, y0, x1, y1 = (int(v) for v in mapped.box)
    inside = np.zeros_like(sl)
    inside[y0 : y1 + 1, x0 : x1 + 1] = 1
    np.testing.assert_array_equal(sl, inside)
    assert ras.sum() == marker.sum() == 18


def test_prompt_on_another_axis_is_refused() -> None:
    prepared = prepared_for("las")
    with pytest.raises(
        ValueError, match="along source axis 0, but the model segments slices along source axis 2"
    ):
        prompt_to_prepared(Prompt(box=(1, 1, 3, 3), slice_index=2, axis=0), prepared)


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (Prompt(box=(1, 1, 3, 3), slice_index=9, axis=2), "outside the image"),
        (Prompt(points=[(40, 1)], point_labels=[1], slice_index=2, axis=2), "outside slice"),
        (Prompt(box=(1, 1, 3, 3), axis=2), "needs slice_index"),
    ],
)
def test_bad_prompts_name_the_problem(prompt: Prompt, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prompt_to_prepared(prompt, prepared_for("ras"))


def test_automatic_prompt_without_slice_applies_everywhere() -> None:
    prepared = prepared_for("permuted")
    p = prompt_to_prepared(Prompt(class_id=2), prepared)
    assert p.is_automatic and p.slice_index is None and p.class_id == 2 and p.axis == prepared.axis


def test_in_plane_resampling_scales_boxes() -> None:
    """With record.spacing the model grid is resampled in-plane; a box keeps its extent in mm."""
    prepared = prepared_for("ras", spacing=1.8)  # source spacing 0.9 x 1.1 mm
    box = Prompt(box=(4, 2, 11, 9), slice_index=3, axis=2)  # 8 x 8 voxels = 7.2 x 8.8 mm
    mapped = prompt_to_prepared(box, prepared)
    x0, y0, x1, y1 = mapped.box
    assert (x1 - x0 + 1) * 1.8 == pytest.approx(7.2, abs=1e-6)
    assert (y1 - y0 + 1) * 1.8 == pytest.approx(8.8, abs=1e-6)
    back = prompt_to_source(mapped, prepared)
    np.testing.assert_allclose(back.box, box.box, atol=1e-5)
