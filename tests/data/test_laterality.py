"""Left/right class pairs and the flip that exchanges them (salt_seg.data.laterality, LateralFlipd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandFlipd

from salt_seg.data import AugmentConfig, SliceDataset, Volume, load_dataset, write_nnunet_dataset
from salt_seg.data.laterality import mirror_pairs, swap_table
from salt_seg.data.slices import LateralFlipd
from salt_seg.data.synthetic import synthetic_3d
from salt_seg.preprocessing import Preprocessing
from salt_seg.training.config import DataSection

COLIN = {
    1: "hippocampus_L",
    2: "hippocampus_R",
    3: "amygdala_L",
    4: "amygdala_R",
    5: "caudate_L",
    6: "caudate_R",
    7: "brainstem",
}


def test_pairs_found_from_names_in_the_usual_spellings():
    assert mirror_pairs(COLIN) == [(1, 2), (3, 4), (5, 6)]
    assert mirror_pairs({1: "Left-Putamen", 2: "Right-Putamen", 3: "lh.insula", 4: "rh.insula"}) == [
        (1, 2),
        (3, 4),
    ]
    # order of ids does not matter, case and separators do not either; the left id comes first
    assert mirror_pairs({4: "kidney left", 9: "Kidney Right", 2: "liver"}) == [(4, 9)]
    assert mirror_pairs({1: "R_lung", 2: "L_lung"}) == [(2, 1)]


def test_names_without_a_partner_or_ambiguous_pair_with_nothing():
    assert mirror_pairs({1: "grey_matter", 2: "white_matter", 3: "other_brain"}) == []
    assert mirror_pairs({1: "spleen_L", 2: "liver"}) == []  # no right partner
    assert mirror_pairs({1: "L1", 2: "L2", 3: "vertebra"}) == []  # "L1" is not a laterality token
    # a side pairs with the same spelling of the other side ("L" with "R", "left" with "right")
    assert mirror_pairs({1: "lobe_L", 2: "lobe_left", 3: "lobe_R"}) == [(1, 3)]
    # two left names that read the same (separators apart): ambiguous, no pair
    assert mirror_pairs({1: "lobe_L", 2: "lobe-L", 3: "lobe_R"}) == []


def test_swap_table_is_an_involution():
    t = swap_table([(1, 2), (5, 3)], 7)
    assert t == [0, 2, 1, 5, 4, 3, 6]
    assert [t[t[i]] for i in range(7)] == list(range(7))


def _sample():
    lab = torch.zeros(1, 4, 6)
    lab[0, 1, 0], lab[0, 2, 5], lab[0, 3, 1] = 1, 2, 3
    return {"image": torch.arange(24.0).reshape(1, 4, 6), "label": lab}


def test_flip_mirrors_columns_and_exchanges_the_pair():
    t = LateralFlipd(keys=["image", "label"], prob=1.0, spatial_axis=1, pairs=[(1, 2)])
    out = t(_sample())
    lab = out["label"][0]
    assert lab[1, 5] == 2 and lab[2, 0] == 1 and lab[3, 4] == 3  # moved and exchanged; 3 only moved
    assert torch.equal(out["image"], _sample()["image"].flip(-1))
    kept = t(_sample() | {"lateral": False})["label"][0]  # a sagittal slice: moved, not exchanged
    assert kept[1, 5] == 1 and kept[2, 0] == 2


def test_without_pairs_the_flip_is_monai_randflipd_draw_for_draw():
    a = LateralFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1)
    b = RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1)
    a.set_random_state(seed=3)
    b.set_random_state(seed=3)
    flipped = 0
    for _ in range(20):
        x, y = a(_sample()), b(_sample())
        assert torch.equal(x["label"], y["label"]) and torch.equal(x["image"], y["image"])
        flipped += int(not torch.equal(x["image"], _sample()["image"]))
    assert 0 < flipped < 20


def test_modes_swap_off_plain():
    classes = {1: "a_L", 2: "a_R"}
    only_flip = {"flip_prob": 1.0, "affine_prob": 0.0, "intensity_prob": 0.0}
    swap = AugmentConfig(**only_flip).build(classes)(_sample())["label"][0]
    plain = AugmentConfig(lateral_flip="plain", **only_flip).build(classes)(_sample())["label"][0]
    off = AugmentConfig(lateral_flip="off", **only_flip).build(classes)(_sample())["label"][0]
    assert swap[1, 5] == 2 and plain[1, 5] == 1 and off[1, 0] == 1 and off[1, 5] == 0
    assert AugmentConfig(**only_flip).pairs(classes) == ((1, 2),)
    assert AugmentConfig(lateral_flip="plain").pairs(classes) == ()
    assert AugmentConfig(mirror_pairs=[[2, 1]]).pairs(classes) == ((2, 1),)  # explicit pairs win
    with pytest.raises(ValueError, match="lateral_flip"):
        AugmentConfig(lateral_flip="mirror")
    with pytest.raises(ValueError, match="data.lateral_flip"):
        DataSection(lateral_flip="yes")


@pytest.fixture(scope="module")
def lateral_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lateral")

    def cases():
        img, lab = synthetic_3d((30, 26, 10), n_objects=4, seed=11)
        v = Volume(img * 1000, np.diag([1.0, 1.0, 2.0, 1.0]))
        yield "c0", v, v.with_array(lab)

    write_nnunet_dataset(root, cases(), classes={1: "a", 2: "b", 3: "c"}, channel_names=["MR"], name="lat")
    return load_dataset(root)


@pytest.mark.parametrize("axis", [2, 0])
def test_slice_dataset_exchanges_pairs_in_axial_slices_only(lateral_dataset, axis):
    """Class 1 of a flipped axial sample is what class 2 was (same pixel count up to the resize); a sagittal
    slice's flip runs front to back, so there nothing is exchanged."""
    classes = {1: "blob_L", 2: "blob_R", 3: "tube"}
    rec = Preprocessing(intensity="mr", image_size=64, classes=classes, axis=axis)
    only_flip = {"flip_prob": 1.0, "affine_prob": 0.0, "intensity_prob": 0.0}

    def counts(aug):
        ds = SliceDataset.from_dataset(
            lateral_dataset, rec, case_ids=["c0"], train=aug is not None, augment=aug, slices="all"
        )
        lab = torch.stack([ds[i]["label"] for i in range(len(ds))])
        return np.array([(lab == c).sum().item() for c in (1, 2, 3)], dtype=float)

    base = counts(None)
    assert abs(base[0] - base[1]) > 0.2 * base.max()  # the two classes differ in size: the test can tell
    swap = counts(AugmentConfig(**only_flip))
    plain = counts(AugmentConfig(lateral_flip="plain", **only_flip))
    np.testing.assert_allclose(plain, base, rtol=0.03)
    expected = base[[1, 0, 2]] if axis == 2 else base
    np.testing.assert_allclose(swap, expected, rtol=0.03)
