"""Every shipped config parses and validates (unknown keys, types, adapter and preprocessing sections), and its
resolved form (``config.yaml``) parses back to the same config."""

from __future__ import annotations

from pathlib import Path

import pytest

from salt_seg.training.config import load_config, parse_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"vit_b_salt_r4", "vit_b_salt_r256", "vit_b_lora_r4", "vit_b_lora_r256", "vit_b_ssam"} <= names
    assert {f"builtin_{a}" for a in ("salt", "lora", "ssam", "svfit", "effort", "full", "none")} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_and_says_what_it_is_for(path: Path) -> None:
    assert path.read_text().startswith("#"), "each config starts with a comment saying what it is for"
    cfg = load_config(path)
    assert cfg.description
    assert cfg.adapter.name in path.stem.split("_")
    rec = cfg.preprocessing
    assert rec.image_size == cfg.model.image_size
    # the resolved tree (every default) is what a run folder's config.yaml holds: it parses back to this config
    resolved = cfg.to_dict()
    assert parse_config(resolved) == cfg and parse_config(resolved).to_dict() == resolved


def test_rank_sub_key_override_works_on_a_scalar_rank_as_in_salt_seg_params(tmp_path: Path) -> None:
    """``--set adapter.rank.attn=...`` on a config whose rank is one number: the number stays the default."""
    path = tmp_path / "c.yaml"
    path.write_text("adapter: {name: salt, rank: 4}\n")
    cfg = load_config(path, ["adapter.rank.attn=3", "adapter.r_lora=2"])
    assert cfg.adapter.rank == {"default": 4, "attn": 3} and cfg.adapter.r_lora == 2
    # a rule as the whole rank is promoted the same way
    cfg = parse_config({"adapter": {"rank": {"fraction": 0.5}}}, ["adapter.rank.mlp=7"])
    assert cfg.adapter.rank == {"default": {"fraction": 0.5}, "mlp": 7}


def test_preprocessing_derives_what_the_config_leaves_out() -> None:
    """``image_size`` from ``model.image_size``, ``prompt_mode`` from ``train.prompt``; ``classes`` from the dataset
    (so the resolved config leaves both derived keys out and parses back to the same config)."""
    cfg = parse_config({"model": {"image_size": 128}, "train": {"prompt": "geometric"}})
    assert cfg.preprocessing.image_size == 128 and cfg.preprocessing.prompt_mode == "mixed"
    assert cfg.classes_from_dataset and "classes" not in cfg.to_dict()["preprocessing"]
    assert parse_config(cfg.to_dict()) == cfg
    given = parse_config(
        {"preprocessing": {"classes": {1: "liver"}, "image_size": 64}, "model": {"image_size": 128}}
    )
    assert not given.classes_from_dataset and given.to_dict()["preprocessing"]["classes"] == {"1": "liver"}
    assert given.preprocessing.image_size == 64
    with pytest.raises(ValueError, match="unknown config key 'derived'"):
        parse_config({"derived": []})
