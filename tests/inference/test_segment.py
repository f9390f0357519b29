"""segment_volume: modes, empty slices, the overlap policy, batching (mirrors inference/segment.py and backend.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salt_seg.data import Volume, extract_slice, prepare_volume
from salt_seg.inference import InferenceSettings, LabelAccumulator, ModelBackend, segment_volume
from salt_seg.prompts import Prompt
from tests.inference.conftest import AFFINES, OracleModel, oracle_record


def cuboid_volume(kind: str = "las", shape=(64, 48, 12)):
    """A bright cuboid on slices 3..7 (area 20 x 10) and a small bright square (4 x 4) on slice 9."""
    img = np.full(shape, 0.1, np.float32)
    img[10:30, 5:15, 3:8] = 0.9
    if shape[2] > 9:
        img[40:44, 30:34, 9] = 0.9
    return Volume(img, AFFINES[kind])


def test_auto_mode_keeps_structure_slices_and_leaves_the_rest_empty() -> None:
    vol = cuboid_volume()
    record = oracle_record()
    prepared = prepare_volume(vol, record)
    settings = InferenceSettings(score_threshold=0.5, min_area_px=4)
    res = segment_volume(
        OracleModel(small=50), record, prepared, mode="auto", settings=settings, batch_size=4
    )
    labels = prepared.to_source(res.label_map)
    expected = np.zeros(vol.shape, np.uint8)
    expected[10:30, 5:15, 3:8] = 1  # the 16-px square is unsure (oracle: < 50 px, stability 0): dropped
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(np.nonzero(res.kept[1])[0], [3, 4, 5, 6, 7])  # LAS: k is not flipped
    assert not np.isnan(res.scores[1]).any()  # every slice was decoded
    np.testing.assert_allclose(res.scores[1][[3, 9, 0]], [0.95, 0.2, 0.2])
    assert res.label_map.dtype == np.uint8 and res.mode == "auto"


@pytest.mark.parametrize(("measure", "threshold"), [("iou", 0.1), ("stability", 0.0)])
def test_confidence_is_reported_not_judged(measure: str, threshold: float) -> None:
    """No low-confidence flag (issue 14: a cut at 0.8 marked 99 of 105 CT slices); the confidences stay."""
    from salt_seg.inference.summary import case_summary

    vol = cuboid_volume()
    record = oracle_record()
    prepared = prepare_volume(vol, record)
    settings = InferenceSettings(confidence=measure, score_threshold=threshold)
    res = segment_volume(OracleModel(small=50), record, prepared, mode="auto", settings=settings)
    np.testing.assert_allclose(res.stability[1][[3, 9]], [1.0, 0.0])
    assert res.confidence == measure
    assert not hasattr(res, "flagged_slices") and "low_confidence" not in settings.to_dict()
    summary = case_summary(res, prepared, prepared.to_source(res.label_map, order=0))
    assert not [k for k in summary if "low_confidence" in k]
    assert not [k for v in summary["structures"].values() for k in v if "low_confidence" in k]
    assert summary["confidence"] == measure and summary["structures"]["1"]["mean_confidence"] is not None


def test_overlap_policy_highest_probability_wins_ties_to_lower_id() -> None:
    p1 = np.array([[0.7, 0.8], [0.4, 0.9]], np.float32)
    p2 = np.array([[0.9, 0.8], [0.45, 0.6]], np.float32)
    p3 = np.array([[0.2, 0.2], [0.51, 0.95]], np.float32)
    for order in ([1, 2, 3], [3, 2, 1], [2, 3, 1]):
        acc = LabelAccumulator((2, 2, 1), 2, [1, 2, 3], keep_probabilities=True)
        for c in order:
            acc.add(c, 0, {1: p1, 2: p2, 3: p3}[c])
        lab = extract_slice(acc.label_map(), 2, 0)
        np.testing.assert_array_equal(lab, [[2, 1], [3, 3]])  # 0.9 > 0.7; tie 0.8 -> 1; 0.51; 0.95
        probs = acc.probability_maps()
        assert probs is not None
        np.testing.assert_allclose(extract_slice(probs[1], 2, 0), p2)
    same = LabelAccumulator((2, 2, 1), 2, [1])
    same.add(1, 0, np.array([[0.6, 0.0], [0.0, 0.0]], np.float32))
    same.add(1, 0, np.array([[0.0, 0.0], [0.0, 0.7]], np.float32))
    assert int(same.label_map().sum()) == 2  # prompts of one class unite


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_to_volume_inverts_extract_slice(axis: int) -> None:
    from salt_seg.inference.segment import slices_to_volume

    vol = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    stack = np.stack([extract_slice(vol, axis, i) for i in range(vol.shape[axis])])
    np.testing.assert_array_equal(slices_to_volume(stack, axis), vol)
    two = np.stack([stack, stack + 1])
    np.testing.assert_array_equal(slices_to_volume(two, axis)[1], vol + 1)


def test_prompts_mode_and_batch_size_do_not_change_the_result() -> None:
    vol = cuboid_volume("oblique")
    record = oracle_record({1: "a", 2: "b"})
    prepared = prepare_volume(vol, record)
    from salt_seg.inference import prompts_to_prepared

    src = [
        Prompt(box=(10, 5, 29, 14), class_id=2, slice_index=4, axis=2),
        Prompt(points=[(41, 31)], point_labels=[1], class_id=1, slice_index=9, axis=2),
        Prompt(box=(0, 0, 63, 47), class_id=1, slice_index=5, axis=2),
    ]
    prompts = prompts_to_prepared(src, prepared)
    outs = []
    for bs in (1, 3):
        backend = ModelBackend(OracleModel(), prepared, batch_size=bs)
        res = segment_volume(backend, record, prepared, prompts, mode="prompts")
        assert backend.encoded == 3  # only the prompted slices are encoded
        outs.append(prepared.to_source(res.label_map))
    np.testing.assert_array_equal(outs[0], outs[1])
    expected = np.zeros(vol.shape, np.uint8)
    expected[10:30, 5:15, 4] = 2
    expected[40:44, 30:34, 9] = 1
    expected[10:30, 5:15, 5] = 1
    np.testing.assert_array_equal(outs[0], expected)


def test_auto_mode_encodes_each_slice_once_in_batches() -> None:
    prepared = prepare_volume(cuboid_volume(), oracle_record())
    calls = []
    model = OracleModel()
    orig = model.encode_images
    model.encode_images = lambda x: (calls.append(x.shape[0]), orig(x))[1]  # type: ignore[method-assign]
    segment_volume(model, oracle_record(), prepared, batch_size=5)
    assert calls == [5, 5, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "prompts"}, "needs prompts"),
        ({"mode": "bogus"}, "not one of"),
        ({"mode": "prompts", "prompts": [Prompt(box=(1, 1, 2, 2), class_id=5, slice_index=0)]}, "class id 5"),
        ({"mode": "prompts", "prompts": [Prompt(box=(1, 1, 2, 2))]}, "needs slice_index"),
        ({"mode": "propagate", "prompts": [Prompt(class_id=1, slice_index=2)]}, "needs a box or points"),
    ],
)
def test_bad_calls_are_refused(kwargs, match) -> None:
    record = oracle_record()
    prepared = prepare_volume(cuboid_volume(), record)
    with pytest.raises(ValueError, match=match):
        segment_volume(OracleModel(), record, prepared, **kwargs)


def test_auto_mode_needs_class_tokens() -> None:
    from salt_seg.model import build_model

    record = oracle_record()
    prepared = prepare_volume(cuboid_volume(), record)
    with pytest.raises(ValueError, match="needs a model trained with class tokens"):
        segment_volume(build_model("tiny", image_size=64), record, prepared, mode="auto")
    with pytest.raises(ValueError, match="another preprocessing record"):
        segment_volume(OracleModel(), oracle_record({1: "x", 2: "y"}), prepared)


def test_predictor_backend_matches_batched_model() -> None:
    """The viewer's Predictor (embedding cache, one slice at a time) gives the batched backend's result."""
    from salt_seg.model import build_model
    from salt_seg.model.predictor import Predictor

    torch.manual_seed(3)
    model = build_model("tiny", image_size=64, num_classes=1)
    record = oracle_record()
    prepared = prepare_volume(cuboid_volume(shape=(64, 48, 5)), record)
    a = segment_volume(
        model, record, prepared, probabilities=True, settings=InferenceSettings(score_threshold=0.0)
    )
    b = segment_volume(
        Predictor(model, record),
        record,
        prepared,
        probabilities=True,
        settings=InferenceSettings(score_threshold=0.0),
    )
    assert a.probabilities is not None and b.probabilities is not None
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    np.testing.assert_allclose(a.scores[1], b.scores[1], atol=1e-4)
    # the label map is the probability map thresholded at 0.5 (one class)
    np.testing.assert_array_equal(a.label_map, (a.probabilities[0] > 0.5).astype(np.uint8))


def _mirrored_volume(vol: Volume, axis: int = 2) -> Volume:
    """The same volume with every slice (along ``axis``, display orientation) mirrored left-right."""
    from salt_seg.data import insert_slice

    out = np.empty_like(vol.data)
    for i in range(vol.data.shape[axis]):
        insert_slice(out, axis, i, extract_slice(vol.data, axis, i)[:, ::-1])
    return Volume(out, vol.affine)


def test_mirroring_averages_a_slice_with_its_mirror_image_and_mirrors_prompts() -> None:
    """Test-time mirroring: the probabilities are the mean of the slice's and of its mirror image's (taken from a
    volume mirrored in the data, prompts mirrored with it), in the original frame; twice the slices encoded."""
    from salt_seg.model import build_model
    from salt_seg.prompts import mirror_prompt

    torch.manual_seed(11)
    model = build_model("tiny", image_size=64, num_classes=2).eval()  # not mirror-symmetric
    record = oracle_record({1: "a", 2: "b"})
    vol = cuboid_volume("las")
    prepared, flipped = prepare_volume(vol, record), prepare_volume(_mirrored_volume(vol), record)
    width = prepared.model_input(4)[1].original_size[1]
    items = [
        (4, Prompt(box=(10.0, 5.0, 29.0, 14.0), class_id=1)),
        (4, Prompt(points=[(12.0, 20.0)], point_labels=[1], class_id=2)),
        (9, Prompt(class_id=2)),  # a class token: nothing to mirror
    ]
    both = ModelBackend(model, prepared, batch_size=2, mirror=True)
    got = both.decode(items)
    plain = ModelBackend(model, prepared, batch_size=2).decode(items)
    other = ModelBackend(model, flipped, batch_size=2).decode(
        [(i, mirror_prompt(p, width)) for i, p in items]
    )
    assert both.encoded == 4  # slices 4 and 9, each twice
    for g, a, b in zip(got, plain, other, strict=True):
        np.testing.assert_allclose(
            g.probabilities, (a.probabilities + b.probabilities[:, ::-1]) / 2, atol=1e-5
        )
        assert g.score == pytest.approx((a.score + b.score) / 2, abs=1e-5)
        assert not np.allclose(a.probabilities, b.probabilities[:, ::-1], atol=1e-3)  # the views differ
    assert mirror_prompt(mirror_prompt(items[0][1], width), width) == items[0][1]
    assert mirror_prompt(items[0][1], width).box == (width - 30.0, 5.0, width - 11.0, 14.0)


def test_mirroring_is_a_setting_of_segment_volume_and_needs_the_model() -> None:
    from salt_seg.model.predictor import Predictor

    record = oracle_record()
    prepared = prepare_volume(cuboid_volume(), record)
    calls = []
    model = OracleModel()
    orig = model.encode_images
    model.encode_images = lambda x: (calls.append(x.shape[0]), orig(x))[1]  # type: ignore[method-assign]
    mirrored = segment_volume(model, record, prepared, settings=InferenceSettings(mirror=True), batch_size=6)
    assert sum(calls) == 2 * prepared.n_slices
    assert InferenceSettings(mirror=True).to_dict()["mirror"] is True
    # the oracle answers each slice's own bright pixels, which mirroring maps back exactly: same label map
    np.testing.assert_array_equal(
        mirrored.label_map, segment_volume(OracleModel(), record, prepared).label_map
    )
    from salt_seg.model import build_model

    net = build_model("tiny", image_size=64, num_classes=1)
    with pytest.raises(ValueError, match="predictor does not mirror"):
        segment_volume(Predictor(net, record), record, prepared, settings=InferenceSettings(mirror=True))
    # a predictor that mirrors is taken, and gives what the batched backend gives
    mirrored_settings = InferenceSettings(mirror=True)
    via_predictor = segment_volume(
        Predictor(net, record, mirror=True), record, prepared, settings=mirrored_settings, probabilities=True
    )
    via_model = segment_volume(net, record, prepared, settings=mirrored_settings, probabilities=True)
    np.testing.assert_allclose(via_predictor.probabilities, via_model.probabilities, atol=1e-5)
