"""Resolution ceiling (salt_seg/evaluation/ceiling.py) and ``salt-seg data ceiling``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salt_seg.cli import main
from salt_seg.evaluation.ceiling import dataset_ceiling, mean_ceiling, resolution_ceiling

YY, XX = np.mgrid[:128, :128]
#: 2x2-pixel squares alternating between class 1 and class 2
CHECKER = (((YY // 2) + (XX // 2)) % 2 + 1).astype(np.int64)
#: a disc of radius 40 px (class 1) on background
DISC = ((YY - 64) ** 2 + (XX - 64) ** 2 < 40**2).astype(np.int64)


def test_checkerboard_is_lost_on_a_coarse_grid_and_kept_at_full_resolution():
    coarse = resolution_ceiling(CHECKER, [1, 2], image_size=128, grid=16)
    assert set(coarse) == {1, 2}
    # every 8x8 cell averages to exactly one half, which is not above the 0.5 threshold: nothing is drawn
    assert coarse[1] < 0.9 and coarse[2] < 0.9
    assert coarse == {1: 0.0, 2: 0.0}
    full = resolution_ceiling(CHECKER, [1, 2], image_size=128, grid=128)
    assert full[1] >= 0.999 and full[2] >= 0.999
    assert resolution_ceiling(CHECKER, [1, 2], image_size=128, grid=64) == pytest.approx({1: 1.0, 2: 1.0})


def test_large_disc_is_nearly_perfect_on_a_coarse_grid():
    d32 = resolution_ceiling(DISC, [1], image_size=128, grid=32)[1]
    d16 = resolution_ceiling(DISC, [1], image_size=128, grid=16)[1]
    assert 0.97 < d16 <= d32 < 1.0
    assert resolution_ceiling(DISC, [1], image_size=128, grid=128)[1] == 1.0


def test_non_square_slice_goes_through_the_longest_side_resize_and_back():
    yy, xx = np.mgrid[:100, :150]
    disc = ((yy - 50) ** 2 + (xx - 70) ** 2 < 30**2).astype(np.int64)
    # input 256: 150 -> 256 (resized 171 x 256, padded below); at full grid only the resize round trip is lost
    assert resolution_ceiling(disc, [1], image_size=256, grid=256)[1] > 0.995
    assert 0.97 < resolution_ceiling(disc, [1], image_size=256, grid=64)[1] < 1.0
    assert resolution_ceiling(disc, [1], image_size=256, grid=64, resize="square")[1] > 0.97


def test_absent_classes_are_skipped_and_not_counted():
    assert resolution_ceiling(DISC, [1, 2, 7], image_size=128, grid=32).keys() == {1}
    assert resolution_ceiling(np.zeros((20, 30), np.int64), [1], image_size=64, grid=16) == {}
    summary = mean_ceiling([DISC, CHECKER, np.zeros((128, 128), np.int64)], [1, 2, 3], 128, [16, 128])
    assert summary[128][1]["n"] == 2 and summary[128][2]["n"] == 1 and summary[128][3]["n"] == 0
    assert math.isnan(summary[128][3]["mean"])
    d16 = resolution_ceiling(DISC, [1], 128, 16)[1]
    assert summary[16][1]["mean"] == pytest.approx((d16 + 0.0) / 2)  # disc and checkerboard class 1
    assert summary[128][2]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid": 0}, "grid must be in 1..image_size"),
        ({"grid": 256}, "grid must be in 1..image_size"),
        ({"image_size": 0, "grid": 1}, "image_size must be >= 1"),
        ({"resize": "crop"}, "resize must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"image_size": 128, "grid": 32, **kwargs}
    with pytest.raises(ValueError, match=message):
        resolution_ceiling(DISC, [1], **args)


def test_label_must_be_an_integer_map():
    with pytest.raises(ValueError, match="integer label map"):
        resolution_ceiling(DISC.astype(np.float32), [1], 128, 32)


# --- over a dataset, and the CLI ----------------------------------------------------------------------------------
def _write_dataset(root, n_slices=5):
    """128 x 128 x n axial slices: slices 1..n-2 hold a checkerboard (class 1, left) and a disc (class 2)."""
    from salt_seg.data.volume import Volume
    from salt_seg.data.writers import write_nnunet_dataset

    label = np.zeros((128, 128, n_slices), np.int16)
    checker = ((YY // 2) + (XX // 2)) % 2 == 0
    for k in range(1, n_slices - 1):
        label[:48, :, k][checker[:48]] = 1
        label[:, :, k][(YY - 80) ** 2 + (XX - 64) ** 2 < 30**2] = 2
    image = np.random.default_rng(0).normal(size=label.shape).astype(np.float32) + 10 * label
    write_nnunet_dataset(
        root,
        [("toy", Volume(image, np.eye(4), "MR"), Volume(label, np.eye(4), "label"))],
        classes={1: "checker", 2: "disc"},
        channel_names=["T1"],
        name="toy",
    )
    return root, label


def test_dataset_ceiling_reads_every_labelled_slice_or_a_split_part(tmp_path):
    from salt_seg.data import load_dataset
    from salt_seg.data.split import Split, SplitEntry

    root, _ = _write_dataset(tmp_path / "toy")
    ds = load_dataset(root)
    summary, n = dataset_ceiling(ds, 128, [32, 128])
    assert n == 3  # slices 1, 2, 3 hold labels; 0 and 4 are empty
    assert summary[32][1] == {"mean": 0.0, "std": 0.0, "n": 3}
    assert summary[128][1]["mean"] == pytest.approx(1.0) and summary[128][2]["mean"] == pytest.approx(1.0)
    assert 0.97 < summary[32][2]["mean"] < 1.0
    split = Split("slice", 1, 0, 2, 0.0, [SplitEntry("toy", [1])], [], [SplitEntry("toy", [0, 3])])
    summary, n = dataset_ceiling(ds, 128, [32], split=split)
    assert n == 2 and summary[32][2]["n"] == 1  # the empty slice 0 is read but holds no class
    with pytest.raises(ValueError, match="along axis 2, not axis 0"):
        dataset_ceiling(ds, 128, [32], split=split, axis=0)


def test_ceiling_command_prints_both_grids(tmp_path, capsys):
    from salt_seg.data.split import Split, SplitEntry, save_split

    root, _ = _write_dataset(tmp_path / "toy")
    assert main(["data", "ceiling", str(root), "--image-size", "128"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "resolution ceiling of toy: 3 slices (every labelled slice), axis 2, input 128 px"
    assert out[1].split() == ["class", "Dice@32x32", "Dice@128x128", "n", "slices"]
    assert out[3].split() == ["1", "checker", "0.000", "1.000", "3"]
    disc = out[4].split()
    assert disc[:2] == ["2", "disc"] and 0.97 < float(disc[2]) < 1.0 and disc[3:] == ["1.000", "3"]

    split_file = save_split(
        Split("slice", 1, 0, 2, 0.0, [SplitEntry("toy", [1])], [], [SplitEntry("toy", [2, 3])]),
        tmp_path / "split.json",
    )
    code = main(
        ["data", "ceiling", str(root), "--image-size", "128", "--grid", "64", "--split", str(split_file)]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("resolution ceiling of toy: 2 slices (test part of ")
    assert out[3].split() == ["1", "checker", "1.000", "1.000", "2"]  # 2x2 squares survive a 2-px grid


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image-size", "128", "--grid", "0"], "--grid must be in 1..--image-size (128), got 0"),
        (["--image-size", "64", "--grid", "128"], "--grid must be in 1..--image-size (64), got 128"),
        (["--image-size", "128", "--split", "missing.json"], "missing.json: no such split file"),
    ],
)
def test_ceiling_command_user_errors_are_one_line(tmp_path, capsys, argv, message):
    root, _ = _write_dataset(tmp_path / "toy")
    assert main(["data", "ceiling", str(root), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("salt-seg data: error: ") and message in err and err.count("\n") == 1
