"""Acceptance 4 (splits): same seed -> same split; the guard distance holds; whole-volume hold-out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from salt_seg.data.dataset import Case, Dataset
from salt_seg.data.errors import DataError
from salt_seg.data.split import SliceInfo, Split, load_split, make_split, save_split

IDS = [f"case{i:02d}" for i in range(10)]


def _info(n=120, spacing=1.0, fg=(10, 110)):
    return SliceInfo(n, spacing, tuple(range(*fg)))


def test_volume_split_is_deterministic_and_disjoint():
    a = make_split(IDS, shots=3, seed=7)
    b = make_split(list(reversed(IDS)), shots=3, seed=7)
    assert a.to_dict() == b.to_dict()
    assert make_split(IDS, shots=3, seed=8).to_dict() != a.to_dict()
    parts = [{e.case_id for e in a.part(p)} for p in ("train", "val", "test")]
    assert [len(p) for p in parts] == [3, 2, 4]  # 0.2 and 0.4 of 10 cases
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert all(e.slices is None for p in ("train", "val", "test") for e in a.part(p))


def test_volume_split_respects_dataset_split_hints():
    cases = [
        Case(i, [f"/x/{i}.png"], f"/y/{i}.png", split=s)
        for i, s in zip(IDS, ["train"] * 6 + ["val"] * 2 + ["test"] * 2, strict=True)
    ]
    ds = Dataset(__import__("pathlib").Path("/x"), "salt", cases, {1: "vessel"})
    split = make_split(ds, shots=2, seed=0)
    assert {e.case_id for e in split.train} <= set(IDS[:6]) and len(split.train) == 2
    assert [e.case_id for e in split.val] == IDS[6:8] and [e.case_id for e in split.test] == IDS[8:]


@pytest.mark.parametrize(("guard", "spacing"), [(10.0, 1.0), (5.0, 2.0), (20.0, 1.5), (0.0, 1.0)])
def test_slice_split_keeps_guard_distance(guard, spacing):
    infos = {"a": _info(spacing=spacing), "b": _info(90, spacing, (0, 90))}
    split = make_split(["a", "b"], shots=6, seed=3, level="slice", guard_mm=guard, slice_info=infos)
    assert split.level == "slice" and split.guard_mm == guard
    assert sum(len(e.slices) for e in split.train) == 6
    dist = split.min_distance_mm({k: v.spacing_mm for k, v in infos.items()})
    assert dist >= guard
    for case, info in infos.items():  # train slices are labelled slices
        for e in split.train:
            if e.case_id == case:
                assert set(e.slices) <= set(info.foreground)
    again = make_split(["b", "a"], shots=6, seed=3, level="slice", guard_mm=guard, slice_info=infos)
    assert again.to_dict() == split.to_dict()


def test_slice_split_guard_is_tight_for_brute_force_pairs():
    infos = {"vol": _info(200, 1.0, (20, 180))}
    split = make_split(["vol"], shots=5, seed=11, level="slice", guard_mm=12.0, slice_info=infos)
    groups = [np.asarray(e.slices) for p in ("train", "val", "test") for e in split.part(p)]
    assert len(groups) == 3 and all(len(g) for g in groups)
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(groups[i][:, None] - groups[j][None, :]).min() >= 12
    assert split.contains("test", "vol", int(groups[2][0]))
    assert not split.contains("train", "vol", int(groups[2][0]))


def test_slice_split_too_short_for_guard_is_an_error():
    with pytest.raises(DataError, match="cannot hold train .* 50 mm apart"):
        make_split(
            ["v"], shots=3, seed=0, level="slice", guard_mm=50.0, slice_info={"v": _info(60, 1.0, (5, 55))}
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": 0}, "shots must be >= 1"),
        ({"shots": 9}, "only 4 case"),
        ({"shots": 1, "level": "patch"}, "level must be one of"),
        ({"shots": 1, "val": 1.5}, "val fraction"),
        ({"shots": 1, "guard_mm": -1}, "guard_mm"),
    ],
)
def test_bad_split_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(IDS, **kwargs)


def test_save_load_round_trip_and_bad_file(tmp_path):
    split = make_split(["v"], shots=4, seed=2, level="slice", slice_info={"v": _info()})
    path = save_split(split, tmp_path / "split.json")
    assert load_split(path).to_dict() == split.to_dict()
    assert json.loads(path.read_text())["kind"] == "salt_seg.split"
    (tmp_path / "bad.json").write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="bad.json: not a salt_seg split file"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="not a readable split file"):
        load_split(tmp_path / "broken.json")
    assert isinstance(Split.from_dict(split.to_dict()), Split)
