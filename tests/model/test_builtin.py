"""The committed built-in base model: loads, and segments held-out synthetic objects from prompts."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from salt_seg.model.builtin import BUILTIN_IMAGE_SIZE, BUILTIN_VARIANT, builtin_checkpoint
from salt_seg.model.checkpoint import load_base_model
from salt_seg.training.pretrain import HELDOUT_PARAMS, HELDOUT_SEED, evaluate_objectness


@pytest.fixture(scope="module")
def base():
    model, info = load_base_model(None, builtin_checkpoint())
    return model, info


def test_builtin_file_is_small_and_describes_itself(base) -> None:
    path = builtin_checkpoint()
    assert path.stat().st_size <= 25 * 1024 * 1024
    model, info = base
    assert info.variant == BUILTIN_VARIANT and info.image_size == BUILTIN_IMAGE_SIZE
    assert model.image_size == BUILTIN_IMAGE_SIZE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    heldout = json.loads(meta["heldout"])
    assert heldout["seed"] == HELDOUT_SEED
    assert tuple(heldout["size"]) == tuple(HELDOUT_PARAMS.size)


@pytest.fixture(scope="module")
def heldout_scores(base):
    import dataclasses

    model, _ = base
    params = dataclasses.replace(HELDOUT_PARAMS, shape=(model.image_size, model.image_size))
    return evaluate_objectness(model, 100, params=params)  # the model card's held-out set


def test_heldout_dice_matches_the_model_card(heldout_scores) -> None:
    with safe_open(str(builtin_checkpoint()), framework="pt") as f:
        meta = f.metadata()
    assert heldout_scores.box == pytest.approx(float(meta["heldout_dice_box"]), abs=1e-3)
    assert heldout_scores.fill_box == pytest.approx(float(meta["heldout_dice_fill_box"]), abs=1e-3)
    assert heldout_scores.one_point == pytest.approx(float(meta["heldout_dice_one_point"]), abs=1e-3)


def test_box_and_point_prompts_beat_baselines_on_heldout_objects(heldout_scores) -> None:
    scores = heldout_scores
    assert scores.n_objects >= 200
    assert scores.box >= 0.8  # box prompts
    assert scores.box >= scores.fill_box + 0.1  # clearly better than filling the box
    # one positive point: chance (a random object-sized region) scores near the object's area share, ~0.1
    assert scores.one_point >= 0.6


@pytest.mark.xfail(
    strict=True, reason="issue 6 target not reached yet: held-out box Dice 0.843 < 0.9 (128 px base)"
)
def test_box_dice_reaches_the_issue_target(heldout_scores) -> None:
    assert heldout_scores.box >= 0.9
