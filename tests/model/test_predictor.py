from __future__ import annotations

import numpy as np
import pytest
import torch

from salt_seg.model.predictor import OUTSIDE_BOX_LOGIT, Predictor, clip_logits_to_box
from salt_seg.model.sam import InputPrompt
from salt_seg.preprocessing import Preprocessing, prepare_slice
from salt_seg.prompts import Prompt


@pytest.fixture()
def slice_2d() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.normal(0, 20, size=(180, 300)).astype(np.int16)
    img[60:120, 100:200] += 300
    return img


def test_predictor_box_logits_equal_batched_forward(tiny_model, slice_2d) -> None:
    record = Preprocessing(image_size=256, intensity="ct", window_level=100, window_width=600)
    pred = Predictor(tiny_model, record)
    pred.set_image(slice_2d, key=("axial", 5))
    prompt = Prompt(box=(100, 60, 199, 119))
    out = pred.predict(prompt)
    image, tf = prepare_slice(slice_2d, record)
    with torch.no_grad():
        logits, iou = tiny_model(image[None], [InputPrompt.from_prompt(prompt, tf)])
    torch.testing.assert_close(out.low_res_logits, logits[0], atol=1e-5, rtol=0)
    assert out.score == pytest.approx(float(iou[0, 0]), abs=1e-5)
    assert out.mask.shape == slice_2d.shape and out.mask.dtype == bool
    assert out.probabilities.shape == slice_2d.shape
    np.testing.assert_array_equal(out.mask, out.probabilities > 0.5)


def test_embedding_cache_is_reused_and_bounded(tiny_model, slice_2d) -> None:
    pred = Predictor(tiny_model, Preprocessing(image_size=256), cache_size=2)
    calls = []
    orig = tiny_model.encode_images
    tiny_model.encode_images = lambda x: calls.append(1) or orig(x)  # type: ignore[method-assign]
    try:
        pred.set_image(slice_2d, key=1)
        pred.set_image(slice_2d, key=1)
        assert len(calls) == 1
        pred.set_image(slice_2d, key=2)
        pred.set_image(slice_2d, key=3)
        assert not pred.is_cached(1) and pred.is_cached(2) and pred.is_cached(3)
    finally:
        del tiny_model.encode_images


def test_predict_before_set_image_is_a_runtime_error(tiny_model) -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(tiny_model, Preprocessing(image_size=256)).predict(Prompt(box=(0, 0, 5, 5)))


def test_record_size_must_match_model(tiny_model) -> None:
    with pytest.raises(ValueError, match="image_size 1024"):
        Predictor(tiny_model, Preprocessing(image_size=1024))


def test_clip_logits_to_box_keeps_the_box_rounded_outwards() -> None:
    logits = torch.full((10, 12), 3.0)
    out = clip_logits_to_box(logits, (2.5, 1.0, 6.2, 4.0))  # columns 2..7, rows 1..4
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[1:5, 2:8] = True
    assert torch.equal(out > 0, expected)
    assert torch.equal(out[expected], logits[expected])
    assert float(out[~expected].max()) == OUTSIDE_BOX_LOGIT
    # a box past the slice's edge is clipped to the slice
    assert bool((clip_logits_to_box(logits, (-4.0, -3.0, 30.0, 40.0)) > 0).all())


def test_box_prompt_answer_stays_in_the_box_unless_asked(tiny_model, slice_2d) -> None:
    pred = Predictor(
        tiny_model, Preprocessing(image_size=256), threshold=-1e3
    )  # every pixel is foreground raw
    pred.set_image(slice_2d, key=1)
    box = (120.0, 70.0, 160.0, 100.0)
    raw = pred.predict(Prompt(box=box), clip_to_box=False)
    clipped = pred.predict(Prompt(box=box))
    inside = np.zeros(slice_2d.shape, dtype=bool)
    inside[70:101, 120:161] = True
    assert raw.mask.all()
    np.testing.assert_array_equal(clipped.mask, inside)
    np.testing.assert_array_equal(clipped.probabilities[inside], raw.probabilities[inside])
    assert float(clipped.probabilities[~inside].max()) == 0.0
    torch.testing.assert_close(clipped.low_res_logits, raw.low_res_logits)
    # points alone are never clipped
    pt = pred.predict(Prompt(points=[(140.0, 85.0)], point_labels=[1]))
    assert pt.mask.all()


def test_mirroring_predictor_averages_the_slice_and_its_mirror_image(tiny_model, slice_2d) -> None:
    """``Predictor(mirror=True)``: the probabilities are the mean of the plain predictor's on the slice and on its
    mirror image (prompt mirrored, answer flipped back); a box still bounds the answer; two encodings per slice."""
    from salt_seg.prompts import mirror_prompt

    record = Preprocessing(image_size=256, intensity="ct", window_level=100, window_width=600)
    plain, both = Predictor(tiny_model, record), Predictor(tiny_model, record, mirror=True)
    flipped = np.ascontiguousarray(slice_2d[:, ::-1])
    width = slice_2d.shape[1]
    calls = []
    orig = tiny_model.encode_images
    tiny_model.encode_images = lambda x: calls.append(1) or orig(x)  # type: ignore[method-assign]
    try:
        both.set_image(slice_2d, key="s")
    finally:
        del tiny_model.encode_images
    assert len(calls) == 2
    for prompt in (Prompt(box=(100, 60, 199, 119)), Prompt(points=[(120.0, 80.0)], point_labels=[1])):
        got = both.predict(prompt)
        plain.set_image(slice_2d)
        a = plain.predict(prompt)
        plain.set_image(flipped)
        b = plain.predict(mirror_prompt(prompt, width))
        expect = (a.probabilities + b.probabilities[:, ::-1]) / 2
        np.testing.assert_allclose(got.probabilities, expect, atol=1e-5)
        np.testing.assert_array_equal(got.mask, got.probabilities > 0.5)
        assert got.score == pytest.approx((a.score + b.score) / 2, abs=1e-5)
        torch.testing.assert_close(got.low_res_logits, a.low_res_logits)
        assert not np.allclose(a.probabilities, b.probabilities[:, ::-1], atol=1e-3)  # the views differ
        if prompt.box is not None:
            assert not got.mask[:, :100].any() and not got.mask[:, 200:].any()
