"""Intensity floor (salt_seg/evaluation/floors.py) and ``salt-seg data floor``."""

from __future__ import annotations

import numpy as np
import pytest

from salt_seg.cli import main
from salt_seg.evaluation.floors import IntensityClassifier, intensity_floor


def _two_class_slices(n=4, seed=0, size=64):
    """Background around 0, a square of class 1 around 10 and a bar of class 2 around 20, noise std 1.5."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(n):
        lab = np.zeros((size, size), np.int64)
        lab[10 + k : 40 + k, 12:44] = 1
        lab[48:58, 5:60] = 2
        images.append((10.0 * lab + rng.normal(0.0, 1.5, lab.shape)).astype(np.float32))
        labels.append(lab)
    return images, labels


def _dice(pred, gt, c):
    p, g = pred == c, gt == c
    return 2.0 * np.logical_and(p, g).sum() / (p.sum() + g.sum())


@pytest.mark.parametrize("kind", ["nearest_mean", "gaussian"])
def test_well_separated_intensities_are_segmented(kind):
    images, labels = _two_class_slices()
    clf = IntensityClassifier(kind).fit(images[:2], labels[:2])
    np.testing.assert_array_equal(clf.classes, [0, 1, 2])
    for img, lab in zip(images[2:], labels[2:], strict=True):
        pred = clf.predict(img)
        assert pred.shape == img.shape and pred.dtype == np.int64
        assert _dice(pred, lab, 1) > 0.95 and _dice(pred, lab, 2) > 0.95


def test_nearest_mean_is_exact():
    images = [np.array([[0.0, 2.0], [10.0, 14.0]]), np.array([[4.0, 30.0]])]
    labels = [np.array([[0, 0], [1, 1]]), np.array([[0, 2]])]
    clf = IntensityClassifier("nearest_mean").fit(images, labels)
    np.testing.assert_array_equal(clf.means, [2.0, 12.0, 30.0])  # (0 + 2 + 4) / 3, (10 + 14) / 2, 30
    # midpoints 7 and 21 are the boundaries; a tie (exactly 7) goes to the lower class id
    pred = clf.predict(np.array([[-5.0, 6.9, 7.0, 7.1], [20.9, 21.0, 21.1, 100.0]]))
    np.testing.assert_array_equal(pred, [[0, 0, 0, 1], [1, 1, 2, 2]])
    again = IntensityClassifier("nearest_mean").fit(images, labels)
    np.testing.assert_array_equal(again.predict(images[0]), clf.predict(images[0]))


def test_gaussian_uses_variance_and_prior():
    # class 0: wide spread around 0 (80 % of pixels); class 1: tight around 3. A value of 6 is nearer class 1's
    # mean but far out in its narrow tail, so the Gaussian gives it to the wide class and nearest mean does not.
    rng = np.random.default_rng(1)
    wide, tight = rng.normal(0.0, 4.0, 4000), rng.normal(3.0, 0.3, 1000)
    image = np.concatenate([wide, tight])[None]
    label = np.concatenate([np.zeros(4000, np.int64), np.ones(1000, np.int64)])[None]
    clf = IntensityClassifier("gaussian").fit([image], [label])
    assert clf.priors == pytest.approx([0.8, 0.2])
    assert clf.variances[0] == pytest.approx(16.0, rel=0.1) and clf.variances[1] == pytest.approx(
        0.09, rel=0.1
    )
    values = np.array([[6.0, 3.0, 2.8, -1.0]])
    np.testing.assert_array_equal(clf.predict(values), [[0, 1, 1, 0]])
    nearest = IntensityClassifier("nearest_mean").fit([image], [label])
    np.testing.assert_array_equal(nearest.predict(values), [[1, 1, 1, 0]])


def test_missing_class_is_an_error_when_listed_and_never_predicted_otherwise():
    images, labels = _two_class_slices(2)
    only_bg_and_1 = [np.where(lab == 2, 0, lab) for lab in labels]
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no pixel in the training slices"):
        IntensityClassifier().fit(images, only_bg_and_1, classes=[0, 1, 2])
    clf = IntensityClassifier().fit(images, only_bg_and_1)
    np.testing.assert_array_equal(clf.classes, [0, 1])
    assert 2 not in np.unique(clf.predict(images[0]))


def test_bad_input_and_call_order():
    with pytest.raises(ValueError, match="unknown kind 'knn'; valid: \\['nearest_mean', 'gaussian'\\]"):
        IntensityClassifier("knn")
    with pytest.raises(RuntimeError, match="before fit"):
        IntensityClassifier().predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no training slices"):
        IntensityClassifier().fit([], [])
    with pytest.raises(ValueError, match="must be the same H x W"):
        IntensityClassifier().fit([np.zeros((2, 2))], [np.zeros((2, 3), np.int64)])
    with pytest.raises(ValueError, match="labels must be integers"):
        IntensityClassifier().fit([np.zeros((2, 2))], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="NaN or Inf"):
        IntensityClassifier().fit([np.full((2, 2), np.nan)], [np.zeros((2, 2), np.int64)])
    clf = IntensityClassifier().fit([np.zeros((2, 2))], [np.zeros((2, 2), np.int64)])
    with pytest.raises(ValueError, match="expects an H x W slice"):
        clf.predict(np.zeros((2, 2, 2)))


# --- on a split, and the CLI --------------------------------------------------------------------------------------
def _write_dataset(root):
    """64 x 64 x 6 volume whose axial slices are :func:`_two_class_slices` (classes 1 and 2), slice 5 empty."""
    from salt_seg.data.volume import Volume
    from salt_seg.data.writers import write_nnunet_dataset

    images, labels = _two_class_slices(6, seed=3)
    labels[5] = np.zeros_like(labels[5])
    images[5] = np.random.default_rng(4).normal(0.0, 1.5, images[5].shape).astype(np.float32)
    image = np.stack(images, axis=-1)
    label = np.stack(labels, axis=-1).astype(np.int16)
    write_nnunet_dataset(
        root,
        [("toy", Volume(image, np.eye(4), "MR"), Volume(label, np.eye(4), "label"))],
        classes={1: "square", 2: "bar"},
        channel_names=["T1"],
        name="toy",
    )
    return root


def _split_file(path, train, test):
    from salt_seg.data.split import Split, SplitEntry, save_split

    return save_split(
        Split("slice", len(train), 0, 2, 0.0, [SplitEntry("toy", train)], [], [SplitEntry("toy", test)]), path
    )


def test_intensity_floor_on_a_split(tmp_path):
    root = _write_dataset(tmp_path / "toy")
    split = _split_file(tmp_path / "split.json", [0, 1], [3, 4, 5])
    res = intensity_floor(root, split, "nearest_mean")
    assert res.n_train_slices == 2 and res.n_test_slices == 3
    assert sorted(res.per_class) == [1, 2]
    for c in (1, 2):
        assert res.per_class[c]["n"] == 2 and res.per_class[c]["mean"] > 0.95  # slice 5 is empty: excluded
        assert res.counts[c]["both_empty"] == 1
    np.testing.assert_allclose(res.classifier.means, [0.0, 10.0, 20.0], atol=0.1)
    gauss = intensity_floor(root, split, "gaussian")
    assert gauss.per_class[1]["mean"] > 0.95 and gauss.kind == "gaussian"


def test_floor_command_prints_per_class_dice(tmp_path, capsys):
    root = _write_dataset(tmp_path / "toy")
    split = _split_file(tmp_path / "split.json", [0, 1], [3, 4])
    assert main(["data", "floor", str(root), "--split", str(split)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == "intensity floor (nearest_mean) of toy: fitted on 2 training slices, scored on 2 test slices"
    )
    assert out[1].split() == ["class", "Dice", "n"]
    expected = intensity_floor(root, split)
    for line, c in zip(out[3:5], (1, 2), strict=True):
        s = expected.per_class[c]
        assert line.split() == [
            str(c),
            {1: "square", 2: "bar"}[c],
            f"{s['mean']:.3f}",
            "±",
            f"{s['std']:.3f}",
            "2",
        ]
    assert main(["data", "floor", str(root), "--split", str(split), "--kind", "gaussian"]) == 0
    assert "intensity floor (gaussian)" in capsys.readouterr().out
    assert main(["data", "floor", str(root), "--split", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert "nope.json: no such split file" in err and err.count("\n") == 1
