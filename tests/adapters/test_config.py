"""Configuration validation: every bad configuration gives one clear error naming the field (acceptance 6)."""

from __future__ import annotations

import json

import pytest

from salt_seg.adapters import AdapterConfig, adapter_layers, get_record, inject_adapters
from salt_seg.cli import main
from salt_seg.commands.params import rank_override
from salt_seg.configio import from_dict
from salt_seg.training.config import override_config
from tests.adapters.conftest import make_tiny


def test_defaults_are_resolved_per_adapter() -> None:
    salt = AdapterConfig()
    assert salt.rank == {"attn": {"fraction": 0.99}, "mlp": {"fraction": 0.065}, "neck": {"fraction": 0.977}}
    assert (salt.r_lora, salt.reg_weight, salt.train_norms, salt.train_pos_embed) == (4, 0.01, True, True)
    assert (salt.train_mask_decoder, salt.train_class_tokens) == (False, True)
    none = AdapterConfig(name="none")
    assert (none.train_mask_decoder, none.train_norms, none.rank, none.r_lora) == (True, False, None, None)
    assert AdapterConfig(name="ssam").rank is None
    assert AdapterConfig(name="svfit").rank == {"default": {"energy": 0.99}}
    assert from_dict(AdapterConfig, json.loads(salt.to_json())) == salt  # round trip is stable


def test_rank_merges_over_defaults() -> None:
    c = AdapterConfig(rank={"attn": 760})
    assert c.rank["attn"] == 760 and c.rank["mlp"] == {"fraction": 0.065}
    assert AdapterConfig(rank=8).rank == {"default": 8}
    assert c.rank_for("image_encoder.blocks.3.attn.qkv") == 760
    assert c.rank_for("image_encoder.neck.2") == {"fraction": 0.977}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"r_lora": 0}, "r_lora"),
        ({"r_lora": -3}, "r_lora"),
        ({"r_lora": 2.5}, "r_lora"),
        ({"name": "salty"}, "unknown adapter"),
        ({"rank": {"attn": {"fraction": 1.5}}}, "rank.attn"),
        ({"rank": {"mlp": {"energy": 0.0}}}, "rank.mlp"),
        ({"rank": {"mlp": -1}}, "rank.mlp"),
        ({"rank": {"head": 4}}, "head"),
        ({"init": "zeros"}, "init"),
        ({"compute": "fast"}, "compute"),
        ({"reg_weight": -1.0}, "reg_weight"),
        ({"name": "lora", "relu": "reference"}, "relu"),
        ({"name": "ssam", "rank": 8}, "rank"),
        ({"name": "svfit", "r_lora": 4}, "r_lora"),
        ({"name": "lora", "compute": "reference"}, "compute"),
        (
            {"name": "salt", "compute": "reference"},
            "compute",
        ),  # a benchmark's layer attribute, not a config value
        ({"name": "lora", "compute": "svd_basis"}, "svd_basis"),
        ({"name": "full", "train_norms": False}, "train_norms"),
        ({"targets": []}, "targets"),
    ],
)
def test_bad_config_raises_one_clear_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        AdapterConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown config key 'rnak'; valid keys here: \['adapt_neck'"):
        from_dict(AdapterConfig, {"name": "salt", "rnak": 4})
    with pytest.raises(ValueError, match=r"unknown config key adapter.'rnak'"):
        from_dict(AdapterConfig, {"rnak": 4}, "adapter")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"rank": {"attn": 500}},
            r"rank 500 for image_encoder\.blocks\.0\.attn\.qkv exceeds its k = min\(out, in\) = 192",
        ),
        (
            {"targets": ["image_encoder.blocks.*.attn.qkvx"]},
            r"'image_encoder\.blocks\.\*\.attn\.qkvx' matched no module",
        ),
        ({"targets": ["image_encoder.blocks.*.attn"]}, r"matched 4 module\(s\) of type \['Attention'\]"),
        (
            {"name": "effort", "rank": {"default": 192}},
            r"rank 192 for image_encoder\.blocks\.0\.attn\.qkv must be in \[0, 191\]",
        ),
    ],
)
def test_bad_targets_and_ranks_fail_before_touching_the_model(kwargs: dict, message: str) -> None:
    model = make_tiny()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        inject_adapters(model, AdapterConfig(**kwargs), progress=False)
    assert adapter_layers(model) == {} and get_record(model) is None
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_second_injection_is_refused() -> None:
    model = make_tiny()
    inject_adapters(model, AdapterConfig(name="lora"), progress=False)
    with pytest.raises(RuntimeError, match="already has adapters"):
        inject_adapters(model, AdapterConfig(name="lora"), progress=False)


def test_overrides_and_rank_text() -> None:
    """One override path (``--set``; ``--rank`` is translated into it), one parser, one rank check."""
    items = ["adapter.rank.attn=760", "adapter.rank.mlp={fraction: 0.1}", "adapter.r_lora=8"]
    d = override_config({"adapter": {"name": "salt"}}, [*items, "adapter.train_pos_embed=false"])
    c = from_dict(AdapterConfig, d["adapter"])
    assert (
        c.rank["attn"] == 760
        and c.rank["mlp"] == {"fraction": 0.1}
        and c.r_lora == 8
        and not c.train_pos_embed
    )
    with pytest.raises(ValueError, match="unknown config key 'rlora'"):
        from_dict(AdapterConfig, override_config({}, ["adapter.rlora=3"])["adapter"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        override_config({}, ["adapter.r_lora"])
    assert rank_override("attn=760") == "adapter.rank.attn=760"
    assert rank_override("energy:0.99") == "adapter.rank.default={energy: 0.99}"
    assert rank_override("neck=fraction:0.5") == "adapter.rank.neck={fraction: 0.5}"
    spec = override_config({}, [rank_override("neck=fraction:0.5")])["adapter"]["rank"]
    assert from_dict(AdapterConfig, {"rank": spec}).rank["neck"] == {"fraction": 0.5}
    with pytest.raises(ValueError, match="layer type"):
        from_dict(AdapterConfig, override_config({}, [rank_override("qkv=4")])["adapter"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rank", "attn=500"], "rank 500 for image_encoder.blocks.0.attn.qkv exceeds"),
        (["--rank", "qkv=4"], "AdapterConfig.rank: unknown layer type 'qkv'"),
        (["--rank", "attn=fraction:x"], "AdapterConfig.rank.attn: fraction must be a number, got 'x'"),
        (["--set", "rlora=3"], "unknown config key 'rlora'"),
        (["--r-lora", "0"], "AdapterConfig.r_lora must be an integer >= 1, got 0"),
        (["--set", "targets=[image_encoder.nothing]"], "matched no module"),
    ],
)
def test_cli_reports_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["params", "--variant", "tiny", "--adapter", "salt", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("salt-seg params: error: ") and message in err
