"""Every shipped config parses and validates (unknown keys, types, adapter and preprocessing sections)."""

from __future__ import annotations

from pathlib import Path

import pytest

from salt_seg.training.config import load_config

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
    assert cfg.adapter_config().name == cfg.adapter["name"]
    rec = cfg.preprocessing_record()
    assert rec.image_size == cfg.model.image_size


def test_rank_sub_key_override_works_on_a_scalar_rank_as_in_salt_seg_params(tmp_path: Path) -> None:
    """``--set adapter.rank.attn=...`` on a config whose rank is one number: the number stays the default."""
    from salt_seg.adapters.config import AdapterConfig
    from salt_seg.adapters.config import apply_overrides as adapter_overrides

    path = tmp_path / "c.yaml"
    path.write_text("adapter: {name: salt, rank: 4}\n")
    cfg = load_config(path, ["adapter.rank.attn=3", "adapter.r_lora=2"])
    assert cfg.adapter["rank"] == {"default": 4, "attn": 3} and cfg.adapter["r_lora"] == 2
    # the same override through the adapter-level entry point (salt-seg params --set) gives the same ranks
    direct = adapter_overrides({"name": "salt", "rank": 4}, ["rank.attn=3"])
    assert AdapterConfig.from_dict(direct).rank == cfg.adapter_config().rank
    assert cfg.adapter_config().rank == {"default": 4, "attn": 3}
