"""Acceptance 5 (slice samples): shapes, dtypes, value ranges; labels integral after resizing and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salt_seg.data import (
    AugmentConfig,
    SliceDataset,
    Volume,
    collate_slices,
    load_dataset,
    make_split,
    prepare_volume,
    write_nnunet_dataset,
)
from salt_seg.data.errors import DataError
from salt_seg.data.synthetic import synthetic_3d
from salt_seg.preprocessing import SAM_PIXEL_MEAN, SAM_PIXEL_STD, Preprocessing

CLASSES = {1: "ellipsoid", 2: "cuboid", 3: "cylinder"}
S = 64
LO = min((0 - m) / s for m, s in zip(SAM_PIXEL_MEAN, SAM_PIXEL_STD, strict=True))
HI = max((255 - m) / s for m, s in zip(SAM_PIXEL_MEAN, SAM_PIXEL_STD, strict=True))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    aff = np.diag([1.1, 0.9, 2.0, 1.0])
    aff[0, 0] = -1.1  # stored LAS: the pipeline must reorient

    def cases():
        for i in range(3):
            img, lab = synthetic_3d((30, 26, 10), n_objects=4, seed=10 + i)
            v = Volume(img * 1000, aff)
            yield f"c{i}", v, v.with_array(lab)

    write_nnunet_dataset(root, cases(), classes=CLASSES, channel_names=["MR"], name="shapes")
    return load_dataset(root)


def _record(**kw):
    return Preprocessing(**{"intensity": "mr", "image_size": S, "classes": CLASSES, **kw})


def test_slice_samples_shapes_dtypes_ranges(dataset):
    ds = SliceDataset.from_dataset(dataset, _record(), case_ids=["c0", "c1"], train=False, targets=True)
    assert len(ds) == 2 * 10  # every axial slice of two cases
    x = ds[3]
    assert x["image"].shape == (3, S, S) and x["image"].dtype == torch.float32
    assert LO - 1e-4 <= x["image"].min() and x["image"].max() <= HI + 1e-4
    assert x["label"].shape == (S, S) and x["label"].dtype == torch.int64
    assert set(x["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert x["targets"].shape == (3, S, S) and x["targets"].dtype == torch.float32
    for k, c in enumerate(x["class_ids"].tolist()):
        assert torch.equal(x["targets"][k].bool(), x["label"] == c)
    tf = x["transform"]
    assert tf.original_size == (26, 30) and tf.image_size == S  # RAS axial slice: rows = J, cols = I
    h, w = tf.resized_size
    assert (x["label"][h:, :] == 0).all() and (x["label"][:, w:] == 0).all()  # padding is background
    assert x["case_id"] == "c0" and x["slice_index"] == 3 and x["axis"] == 2


def test_samples_match_prepare_volume_and_labels_survive_resizing(dataset):
    rec = _record()
    ds = SliceDataset.from_dataset(dataset, rec, case_ids=["c1"], train=False)
    image = dataset.load_image("c1")
    prep = prepare_volume(image, rec, dataset.load_label("c1", image))
    for i in (0, 4, 9):
        x = ds[i]
        ref, tf = prep.model_input(i)
        assert torch.allclose(x["image"], ref, atol=1e-5) and x["transform"] == tf
        native = prep.slice_label(i)
        # every class present in the native slice survives the nearest resize (objects are > 1 pixel)
        assert set(np.unique(native)) == set(x["label"].unique().tolist())


@pytest.mark.parametrize("axis", [0, 1])
def test_other_slice_axes(dataset, axis):
    ds = SliceDataset.from_dataset(
        dataset, _record(axis=axis), case_ids=["c2"], train=False, slices="foreground"
    )
    n = (30, 26)[axis]
    assert 0 < len(ds) <= n
    x = ds[0]
    assert x["axis"] == axis and x["label"].max() > 0


def test_training_augmentation_keeps_labels_integral_and_is_seeded(dataset):
    aug = AugmentConfig(flip_prob=0.5, rotate_deg=15, scale=0.15, affine_prob=1.0, intensity_prob=1.0)
    a = SliceDataset.from_dataset(dataset, _record(), case_ids=["c0"], train=True, augment=aug, seed=5)
    b = SliceDataset.from_dataset(dataset, _record(), case_ids=["c0"], train=True, augment=aug, seed=5)
    for i in range(len(a)):
        xa, xb = a[i], b[i]
        assert torch.equal(xa["image"], xb["image"]) and torch.equal(xa["label"], xb["label"])
        assert set(xa["label"].unique().tolist()) <= {0, 1, 2, 3}
        assert torch.isfinite(xa["image"]).all()
        assert LO - 1e-4 <= xa["image"].min() and xa["image"].max() <= HI + 1e-4
    plain = SliceDataset.from_dataset(dataset, _record(), case_ids=["c0"], train=False)
    assert any(not torch.equal(a[i]["image"], plain[i]["image"]) for i in range(len(a)))


def test_per_class_samples_with_prompts(dataset):
    rec = _record()
    ds = SliceDataset.from_dataset(
        dataset, rec, case_ids=["c0"], train=False, per_class=True, prompt_mode="box"
    )
    image = dataset.load_image("c0")
    prep = prepare_volume(image, rec, dataset.load_label("c0", image))
    assert len(ds) > 0
    for i in range(len(ds)):
        x = ds[i]
        c, s = x["class_id"], x["slice_index"]
        native = prep.slice_label(s) == c
        assert native.any()  # no empty (slice, class) pairs for box prompts
        assert set(x["label"].unique().tolist()) <= {0, 1}
        x0, y0, x1, y1 = x["prompt"].box
        ys, xs = np.nonzero(native)
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
    auto = SliceDataset.from_dataset(
        dataset, rec, case_ids=["c0"], train=False, per_class=True, prompt_mode="auto"
    )
    assert len(auto) == 10 * 3  # class tokens include slices without the class
    assert all(auto[i]["prompt"].is_automatic for i in range(0, len(auto), 7))


def test_uncached_equals_cached_and_collate(dataset):
    cached = SliceDataset.from_dataset(dataset, _record(), case_ids=["c0", "c2"], train=False)
    fresh = SliceDataset.from_dataset(dataset, _record(), case_ids=["c0", "c2"], train=False, cache=False)
    assert len(cached) == len(fresh)
    for i in (0, 11, len(fresh) - 1):
        assert torch.equal(cached[i]["image"], fresh[i]["image"])
        assert torch.equal(cached[i]["label"], fresh[i]["label"])
    batch = collate_slices([cached[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, S, S) and batch["label"].shape == (4, S, S)
    assert isinstance(batch["case_id"], list) and len(batch["transform"]) == 4


def test_from_split_uses_the_split_slices(dataset):
    split = make_split(dataset, shots=4, seed=0, level="slice", val=0.2, test=0.3, guard_mm=2.0)
    train = SliceDataset.from_dataset(
        dataset, _record(), split=split, part="train", augment=None, train=False
    )
    wanted = {(e.case_id, s) for e in split.train for s in e.slices}
    got = {(train[i]["case_id"], train[i]["slice_index"]) for i in range(len(train))}
    assert got == wanted and len(got) == 4
    with pytest.raises(ValueError, match="split slices are along axis 2, the record uses axis 0"):
        SliceDataset.from_dataset(dataset, _record(axis=0), split=split, part="test")


def test_bad_requests_are_named(dataset):
    with pytest.raises(ValueError, match=r"slice\(s\) \[99\] outside 0..9"):
        SliceDataset.from_dataset(dataset, _record(), case_ids=["c0"], slices={"c0": [99]}, train=False)
    with pytest.raises(ValueError, match="prompt_mode"):
        SliceDataset.from_dataset(dataset, _record(), case_ids=["c0"], prompt_mode="lasso", train=False)
    with pytest.raises(ValueError, match="AugmentConfig.rotate_deg"):
        AugmentConfig(rotate_deg=90)
    bad = [{"case_id": "x", "image": [str(dataset.root / "missing.nii.gz")]}]
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        SliceDataset(bad, _record())
    broken = dataset.root.parent / "broken.nii.gz"
    broken.write_bytes(b"junk")
    with pytest.raises(DataError, match="broken.nii.gz: not a readable NIfTI"):
        SliceDataset([{"case_id": "x", "image": [str(broken)]}], _record())


def test_two_d_salt_dataset_slices(tmp_path):
    from .test_formats import make_salt

    ds = load_dataset(make_salt(tmp_path / "salt"))
    rec = Preprocessing(intensity="minmax", channels=[0, 1, 2], image_size=32, classes={1: "vessel"})
    sd = SliceDataset.from_dataset(ds, rec, train=False)
    assert len(sd) == 4
    x = sd[0]
    assert x["image"].shape == (3, 32, 32) and set(x["label"].unique().tolist()) == {0, 1}
    assert x["transform"].original_size == (16, 20)


def test_dataset_pickles_for_spawned_workers_and_loads_batches(dataset):
    import pickle

    from monai.data import DataLoader

    ds = SliceDataset.from_dataset(dataset, _record(), case_ids=["c1"], train=True, seed=1)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["label"], ds[2]["label"])
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_slices, num_workers=0)))
    assert batch["image"].shape == (3, 3, S, S) and batch["label"].dtype == torch.int64


def test_empty_split_part_gives_an_empty_dataset(dataset):
    split = make_split(dataset, shots=1, seed=0, val=0, test=1)
    assert split.val == []
    assert len(SliceDataset.from_dataset(dataset, _record(), split=split, part="val")) == 0
