from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from salt_seg.configio import from_dict
from salt_seg.preprocessing import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    Preprocessing,
    SliceTransform,
    intensity_range,
    logits_to_original,
    prepare_slice,
    window_preset,
)


def test_record_round_trips_through_json() -> None:
    rec = Preprocessing(
        intensity="ct",
        window_level=-600,
        window_width=1500,
        input_scaling="medsam",
        resize="square",
        axis=1,
        image_size=512,
        spacing=0.8,
        channels=[0, 1],
        classes={2: "liver", 1: "spleen"},
        prompt_mode="auto",
    )
    back = from_dict(Preprocessing, json.loads(rec.to_json()))
    assert back == rec
    assert back.classes == {1: "spleen", 2: "liver"} and back.class_ids == [1, 2]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("intensity", "hu", "intensity"),
        ("image_size", 100, "multiple of 16"),
        ("axis", 3, "axis"),
        ("classes", {0: "bg"}, "ids >= 1"),
        ("percentiles", (99, 1), "percentiles"),
        ("window_width", 0, "window_width"),
    ],
)
def test_record_validation_names_the_field(field: str, value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preprocessing(**{field: value})


def test_unknown_record_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown config key 'windw'"):
        from_dict(Preprocessing, {"windw": 3})
    with pytest.raises(ValueError, match="newer than this salt_seg"):
        from_dict(Preprocessing, {"version": 2})


def test_ct_window_and_mr_percentiles() -> None:
    assert intensity_range(np.zeros(3), Preprocessing(intensity="ct", window_level=40, window_width=400)) == (
        -160,
        240,
    )
    assert window_preset("lung") == (-600.0, 1500.0)
    with pytest.raises(ValueError, match="valid"):
        window_preset("liver")
    arr = np.arange(1001, dtype=np.float32)
    lo, hi = intensity_range(arr, Preprocessing(intensity="mr", percentiles=(1, 99)))
    assert lo == pytest.approx(10.0) and hi == pytest.approx(990.0)


def test_prepare_slice_longest_side_pad_and_sam_scaling() -> None:
    img = np.full((100, 200), 240, dtype=np.int16)  # HU at the top of a L40/W400 window -> 1.0
    rec = Preprocessing(intensity="ct", image_size=256)
    x, tf = prepare_slice(img, rec)
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert tf.resized_size == (128, 256)
    expected = (255.0 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD)
    torch.testing.assert_close(x[:, 64, 100], expected)
    assert torch.all(x[:, 128:, :] == 0)  # padding below the resized image


def test_prepare_slice_medsam_square_minmax() -> None:
    img = np.linspace(0, 1000, 60 * 90, dtype=np.float64).reshape(60, 90)
    x, tf = prepare_slice(
        img, Preprocessing(intensity="minmax", input_scaling="medsam", resize="square", image_size=64)
    )
    assert tf.resized_size == (64, 64)
    assert 0.0 <= float(x.min()) < 0.02 and 0.98 < float(x.max()) <= 1.0  # no mean/std, [0, 1]


def test_prepare_slice_rejects_nan_and_3d() -> None:
    with pytest.raises(ValueError, match="NaN"):
        prepare_slice(np.array([[np.nan, 1.0]]), Preprocessing(image_size=64))
    with pytest.raises(ValueError, match="H x W"):
        prepare_slice(np.zeros((4, 5, 6, 7)), Preprocessing(image_size=64))


@pytest.mark.parametrize(
    ("size", "mode"), [((180, 300), "longest"), ((300, 180), "longest"), ((77, 77), "square")]
)
def test_coordinate_mapping_round_trips(size, mode) -> None:
    tf = SliceTransform.create(size, 256, mode)
    pts = np.array([[0.0, 0.0], [12.5, 33.0], [size[1] - 1, size[0] - 1]])
    np.testing.assert_allclose(tf.coords_to_original(tf.coords_to_input(pts)), pts, atol=1e-9)
    box = np.array([3.0, 4.0, 50.0, 60.0])
    np.testing.assert_allclose(tf.coords_to_original(tf.coords_to_input(box)), box, atol=1e-9)
    far = tf.coords_to_input(np.array([[size[1], size[0]]], dtype=float))[0]
    assert far[0] == pytest.approx(tf.resized_size[1]) and far[1] == pytest.approx(tf.resized_size[0])


def test_logits_map_back_to_the_right_place() -> None:
    tf = SliceTransform.create((120, 240), 256, "longest")  # resized 128 x 256, padded to 256
    low = torch.full((1, 64, 64), -10.0)
    low[:, 8:16, 32:48] = 10.0  # input rows 32..64, cols 128..192 -> original rows 30..60, cols 120..180
    out = logits_to_original(low, tf)[0]
    assert out.shape == (120, 240)
    mask = (out > 0).numpy()
    rows, cols = np.nonzero(mask)
    assert abs(rows.min() - 30) <= 1 and abs(rows.max() - 59) <= 1
    assert abs(cols.min() - 120) <= 1 and abs(cols.max() - 179) <= 1
