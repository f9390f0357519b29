from __future__ import annotations

import json

import pytest

from salt_seg.prompts import Prompt, box_from_points, load_prompts, save_prompts


def test_prompt_file_round_trip(tmp_path) -> None:
    prompts = [
        Prompt(points=[(10, 20), (30, 40)], point_labels=[1, 0], class_id=2, slice_index=5, axis=2),
        Prompt(box=(1, 2, 30, 40), slice_index=6, axis=2),
        Prompt(class_id=3),
    ]
    path = tmp_path / "prompts.json"
    save_prompts(path, prompts, extra={"source": "case01.nii.gz"})
    back, meta = load_prompts(path)
    assert back == prompts
    assert meta["source"] == "case01.nii.gz" and meta["version"] == 1
    assert back[2].is_automatic and not back[0].is_automatic
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": [(1, 2)], "point_labels": []}, "must match"),
        ({"points": [(1, 2)], "point_labels": [2]}, "0 .* or 1"),
        ({"box": (5, 5, 1, 1)}, "x0<=x1"),
        ({"class_id": 0}, "background"),
        ({"axis": 4}, "axis"),
    ],
)
def test_bad_prompts_are_rejected(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Prompt(**kwargs)


def test_bad_prompt_file_names_file_and_item(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompts": [{"box": [0, 0, 4, 4]}, {"box": [0, 0, 4]}]}))
    with pytest.raises(ValueError, match=r"p.json: prompt #1: .*4 numbers"):
        load_prompts(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="p.json: not a readable JSON"):
        load_prompts(path)


def test_box_from_two_clicks_in_any_order() -> None:
    assert box_from_points((50, 10), (20, 40)) == (20, 10, 50, 40)
