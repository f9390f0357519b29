"""Prompt files in voxel and world (RAS / LPS mm) coordinates: the conversions added to salt_seg/prompts.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from salt_seg.prompts import (
    Prompt,
    load_prompts,
    plane_axes,
    prompt_from_world,
    prompt_to_world,
    save_prompts,
)
from tests.inference.conftest import AFFINES


def test_plane_axes_convention() -> None:
    assert [plane_axes(a) for a in (0, 1, 2)] == [(1, 2), (0, 2), (0, 1)]
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        plane_axes(3)


def test_world_values_by_hand() -> None:
    """LAS affine, spacing (0.9, 1.1, 2.0), origin (30, -20, 5): voxel (i, j, k) -> (30 - 0.9 i, -20 + 1.1 j, 5 + 2 k)."""
    affine = AFFINES["las"]
    p = Prompt(points=[(10, 4)], point_labels=[1], box=(2, 3, 12, 8), class_id=2, slice_index=6, axis=2)
    d = prompt_to_world(p, affine)
    assert d["points"] == [[21.0, -15.6, 17.0]]
    assert d["box"] == [28.2, -16.7, 17.0, 19.2, -11.2, 17.0]
    assert d["axis"] == 2 and d["class_id"] == 2 and d["point_labels"] == [1]
    lps = prompt_to_world(p, affine, space="LPS")
    assert lps["points"] == [[-21.0, 15.6, 17.0]]
    assert prompt_from_world(d, affine) == p
    assert prompt_from_world(lps, affine, space="LPS") == p


@pytest.mark.parametrize("kind", sorted(AFFINES))
@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_world_file_round_trip(tmp_path: Path, kind: str, space: str) -> None:
    affine = AFFINES[kind]
    prompts = [
        Prompt(box=(1, 2, 9, 7), class_id=1, slice_index=3, axis=2),
        Prompt(points=[(4, 5), (1, 1)], point_labels=[1, 0], class_id=2, slice_index=5, axis=2),
        Prompt(box=(0, 1, 3, 4), slice_index=2, axis=0),
        Prompt(class_id=2),
    ]
    path = tmp_path / "p.json"
    save_prompts(path, prompts, coordinates="world", affine=affine, space=space, extra={"image": "x.nii.gz"})
    doc = json.loads(path.read_text())
    assert doc["coordinates"] == "world" and doc["space"] == space and doc["image"] == "x.nii.gz"
    assert all(len(pt) == 3 for pt in doc["prompts"][1]["points"])
    back, meta = load_prompts(path, affine=affine)
    assert back == prompts
    assert meta["coordinates"] == "world"


def test_world_axis_is_inferred_from_the_box(tmp_path: Path) -> None:
    """Without 'axis', the slice is the voxel axis along which the box corners agree (here 0, not the default 2)."""
    affine = AFFINES["oblique"]
    d = prompt_to_world(Prompt(box=(1, 2, 6, 5), slice_index=4, axis=0), affine)
    del d["axis"]
    p = prompt_from_world(d, affine, default_axis=2)
    assert (p.axis, p.slice_index, p.box) == (0, 4, (1.0, 2.0, 6.0, 5.0))
    one = prompt_to_world(Prompt(points=[(3, 3)], point_labels=[1], slice_index=4, axis=1), affine)
    del one["axis"]
    assert prompt_from_world(one, affine, default_axis=1).axis == 1  # a single point takes the default axis


def test_world_points_off_one_slice_are_refused(tmp_path: Path) -> None:
    affine = AFFINES["ras"]  # spacing (0.9, 1.1, 2.0), origin (-30, -20, 5)
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "coordinates": "world",
                "prompts": [{"points": [[-30, -20, 5], [-20, -10, 9.5]], "point_labels": [1, 1], "axis": 2}],
            }
        )
    )
    with pytest.raises(ValueError, match=r"w.json: prompt #0: .*off slice"):
        load_prompts(path, affine=affine)
    path.write_text(json.dumps({"coordinates": "world", "prompts": [{"box": [-30, -20, 5, -20, -10, 15]}]}))
    with pytest.raises(ValueError, match="do not lie in one slice"):
        load_prompts(path, affine=affine)
    path.write_text(
        json.dumps({"coordinates": "world", "prompts": [{"box": [0, 0, 0, 1, 1, 0], "slice_index": 2}]})
    )
    with pytest.raises(ValueError, match="slice_index follows from the coordinates"):
        load_prompts(path, affine=affine)


def test_world_file_needs_the_affine_and_known_names(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"coordinates": "world", "prompts": []}))
    with pytest.raises(
        ValueError, match="w.json: prompts are in world coordinates.*needs the image's affine"
    ):
        load_prompts(path)
    path.write_text(json.dumps({"coordinates": "pixels", "prompts": []}))
    with pytest.raises(ValueError, match="unknown coordinates 'pixels'"):
        load_prompts(path)
    with pytest.raises(ValueError, match="world coordinates need the image's affine"):
        save_prompts(path, [], coordinates="world")


def test_voxel_files_stay_as_they_were(tmp_path: Path) -> None:
    """The voxel format is unchanged: 2-D points/boxes, slice_index, axis; world conversion is opt-in."""
    p = [Prompt(box=(1, 2, 3, 4), slice_index=5, axis=2)]
    save_prompts(tmp_path / "v.json", p)
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc == {
        "version": 1,
        "coordinates": "voxel",
        "prompts": [{"class_id": 1, "box": [1.0, 2.0, 3.0, 4.0], "slice_index": 5, "axis": 2}],
    }
    assert load_prompts(tmp_path / "v.json", affine=np.eye(4))[0] == p
