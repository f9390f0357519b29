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
        ({"shots": 9}, r"cannot draw 9 training case\(s\) \(shots=9\): only 4 of 10 labelled case"),
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


# --- the sparse protocol --------------------------------------------------------------------------------------------
def _sparse(infos, shots, **kwargs):
    args = {"seed": 0, "level": "slice", "protocol": "sparse", "slice_info": infos, **kwargs}
    return make_split(sorted(infos), shots=shots, **args)


@pytest.mark.parametrize(("guard", "spacing"), [(10.0, 1.0), (4.0, 1.0), (5.0, 2.0), (0.0, 1.0)])
def test_sparse_split_keeps_the_guard_between_training_and_every_val_test_slice(guard, spacing):
    infos = {"vol": _info(260, spacing, (20, 240))}
    split = _sparse(infos, 8, guard_mm=guard)
    train = np.asarray(split.train[0].slices)
    for part in ("val", "test"):
        held = np.asarray([s for e in split.part(part) for s in e.slices])
        assert held.size and np.abs(held[:, None] - train[None, :]).min() * spacing >= guard
        # between the first and last training slice only: interpolation, not extrapolation
        assert held.min() > train.min() and held.max() < train.max()
    val, test = np.asarray(split.val[0].slices), np.asarray(split.test[0].slices)
    assert np.abs(val[:, None] - test[None, :]).min() * spacing >= guard  # a training slice between them
    assert split.min_distance_mm({"vol": spacing}) >= guard
    assert split.protocol == "sparse" and split.guard_mm == guard


def test_sparse_training_slices_are_spread_evenly_and_the_seed_moves_them():
    infos = {"vol": _info(200, 1.0, (10, 190))}  # 180 labelled slices
    seen = set()
    for seed in range(5):
        split = _sparse(infos, 10, guard_mm=4.0, seed=seed)
        train = split.train[0].slices
        assert len(train) == 10 and set(train) <= set(infos["vol"].foreground)
        gaps = np.diff(train)
        assert gaps.max() - gaps.min() <= 1 and gaps.min() >= 17  # 180 / 10 = 18 slices apart
        assert train[0] - 10 < 18 and 189 - train[-1] < 18  # one stratum of 18 slices each
        seen.add(tuple(train))
        assert _sparse(infos, 10, guard_mm=4.0, seed=seed).to_dict() == split.to_dict()  # deterministic
    assert len(seen) > 1


def test_sparse_split_counts_follow_the_fractions_as_far_as_the_guard_allows():
    infos = {"vol": _info(200, 1.0, (10, 190))}
    roomy = _sparse(infos, 10, guard_mm=0.0, val=0.2, test=0.4)
    counts = {p: sum(len(e.slices) for e in roomy.part(p)) for p in ("train", "val", "test")}
    assert counts == {"train": 10, "val": 36, "test": 72}  # 0.2 and 0.4 of 180 labelled slices
    tight = _sparse(infos, 10, guard_mm=4.0, val=0.2, test=0.4)
    # 18-slice gaps with 4 mm kept clear on both sides leave 11 slices in each of the 9 gaps: 3 val, 6 test
    counts = {p: sum(len(e.slices) for e in tight.part(p)) for p in ("val", "test")}
    assert counts == {"val": 33, "test": 66}
    no_val = _sparse(infos, 10, guard_mm=4.0, val=0.0, test=0.4)
    assert no_val.val == [] and sum(len(e.slices) for e in no_val.test) == 72


def test_sparse_split_pools_the_gaps_of_several_cases():
    infos = {"a": _info(120, 1.0, (0, 120)), "b": _info(90, 2.0, (0, 90))}
    split = _sparse(infos, 6, guard_mm=6.0)
    assert {e.case_id: len(e.slices) for e in split.train} == {"a": 3, "b": 3}
    assert split.min_distance_mm({"a": 1.0, "b": 2.0}) >= 6.0
    assert split.val and split.test


def test_sparse_split_without_room_names_the_fix():
    infos = {"vol": _info(200, 1.0, (10, 190))}
    with pytest.raises(
        DataError,
        match="10 training slice.* lower guard_mm to 9 or less, lower shots, or use protocol='block'",
    ):
        _sparse(infos, 10, guard_mm=10.0)
    with pytest.raises(DataError, match="leave 0 gap.* a case needs 2 for a gap\\): raise shots"):
        _sparse(infos, 1, guard_mm=1.0)  # one training slice has no gap beside it
    with pytest.raises(DataError, match="2 training slice.* over 2 case.* leave 0 gap"):
        _sparse({"a": infos["vol"], "b": infos["vol"]}, 2, guard_mm=1.0)
    with pytest.raises(ValueError, match="protocol='sparse' applies to slice-level splits"):
        make_split(IDS, shots=1, protocol="sparse")
    with pytest.raises(ValueError, match="protocol must be one of \\['block', 'sparse'\\]"):
        make_split(["vol"], shots=1, level="slice", protocol="every-nth", slice_info=infos)


def test_protocol_round_trips_and_old_files_are_block(tmp_path):
    infos = {"vol": _info(200, 1.0, (10, 190))}
    split = _sparse(infos, 5, guard_mm=4.0)
    path = save_split(split, tmp_path / "sparse.json")
    doc = json.loads(path.read_text())
    assert doc["protocol"] == "sparse"
    assert load_split(path).to_dict() == split.to_dict() and load_split(path).protocol == "sparse"
    block = make_split(["vol"], shots=5, level="slice", slice_info=infos)
    assert block.protocol == "block" and block.to_dict()["protocol"] == "block"
    del doc["protocol"]  # a split written before protocols existed
    assert Split.from_dict(doc).protocol == "block"
    doc["protocol"] = "diagonal"
    with pytest.raises(DataError, match="split protocol must be one of"):
        Split.from_dict(doc, tmp_path / "x.json")


def test_config_validates_the_protocol():
    from salt_seg.training.config import DataSection

    assert DataSection().protocol == "block"
    assert DataSection(protocol="sparse").protocol == "sparse"
    with pytest.raises(ValueError, match=r"data\.protocol: 'diagonal' is not one of \['block', 'sparse'\]"):
        DataSection(protocol="diagonal")
    with pytest.raises(ValueError, match=r"data\.protocol 'sparse' needs data\.holdout: slices"):
        DataSection(protocol="sparse", holdout="volumes")


# --- classes the training slices miss (issue 14) --------------------------------------------------------------------
def test_split_warns_when_a_held_out_class_is_in_no_training_slice_and_names_the_covering_axes(
    tmp_path, caplog
):
    from salt_seg.data import load_dataset
    from salt_seg.data.split import part_classes, read_slice_infos

    from .conftest import write_atlas

    dataset = load_dataset(write_atlas(tmp_path / "atlas"))
    with caplog.at_level("WARNING", logger="salt_seg.data.split"):
        axial = make_split(dataset, shots=4, seed=0, level="slice", guard_mm=2.0)
    # seed 0 puts the training block below z 45: 'top' (2) is only in held-out slices
    assert max(axial.train[0].slices) < 45
    assert axial.meta["classes_missing_from_train"] == [2]
    [record] = [r for r in caplog.records if r.name == "salt_seg.data.split"]
    assert record.levelname == "WARNING"
    assert "class(es) 2 (top) appear in val or test slices but in no training slice" in record.message
    assert "along axis 2 (axial)" in record.message
    assert "split along axis 0 (sagittal, axis=0) or 1 (coronal, axis=1)" in record.message
    # the suggested axes do what the warning says: their training slices hold both classes, and they are quiet
    infos = read_slice_infos(dataset)
    caplog.clear()
    for axis in (0, 1):
        with caplog.at_level("WARNING", logger="salt_seg.data.split"):
            other = make_split(dataset, shots=4, seed=0, level="slice", guard_mm=2.0, axis=axis)
        assert part_classes(other, "train", infos[axis]) == {1, 2}
        assert "classes_missing_from_train" not in other.meta
    assert not caplog.records


def test_split_class_check_with_given_slice_info_warns_without_guessing_other_axes(caplog):
    # 60 slices, class 2 only in 45..54: known along this axis only, so no other axis is suggested
    classes = tuple((1, 2) if 45 <= i < 55 else (1,) if 5 <= i < 45 else () for i in range(60))
    info = SliceInfo(60, 1.0, tuple(range(5, 55)), classes)
    with caplog.at_level("WARNING", logger="salt_seg.data.split"):
        split = make_split(["v"], shots=4, seed=0, level="slice", guard_mm=2.0, slice_info={"v": info})
    assert split.meta["classes_missing_from_train"] == [2]
    [record] = caplog.records
    assert record.message.endswith("their scores measure nothing the model was shown")
    caplog.clear()
    plain = make_split(
        ["v"], shots=4, seed=0, level="slice", guard_mm=2.0, slice_info={"v": _info(60, 1.0, (5, 55))}
    )
    assert "classes_missing_from_train" not in plain.meta and not caplog.records  # classes unknown: no check
