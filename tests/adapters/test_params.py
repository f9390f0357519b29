"""Parameter accounting and `salt-seg params` (acceptance 5): the paper's SALT budgets on vit_b at 512."""

from __future__ import annotations

import json

import pytest
import torch

from salt_seg.adapters import ADAPTERS, AdapterConfig, count_parameters, inject_adapters, trainable_parameters
from salt_seg.cli import main
from salt_seg.commands.params import ADAPTER_NAMES
from salt_seg.model import build_model
from tests.adapters.conftest import ADAPTER_CASES, make_tiny

RELEASED = {"attn": 760, "mlp": 50, "neck": 250}
#: parameters of the full-resolution branch of `tiny` (transformer width 128: 16 channels)
HIRES_TINY = 84_672


@pytest.fixture(scope="module")
def vit_b_512():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("vit_b", image_size=512)


@pytest.mark.parametrize(("r_lora", "paper", "exact"), [(4, 1.1e6, 1_003_688), (256, 9.4e6, 9_791_432)])
def test_released_salt_budget_on_vit_b_512_is_within_10_percent_of_the_paper(
    vit_b_512, r_lora, paper, exact
) -> None:
    config = AdapterConfig(
        name="salt", rank=RELEASED, r_lora=r_lora, adapt_neck=True, train_class_tokens=False
    )
    report = count_parameters(vit_b_512, config)
    rows = {r.group: r for r in report.rows}
    qkv = rows["image_encoder.blocks.*.attn.qkv"]
    assert (qkv.layers, qkv.ranks, qkv.params) == (12, [760], 12 * (2 * 760 + 2 * 8 * r_lora))
    assert rows["image_encoder.blocks.*.mlp.lin2"].params == 12 * (2 * 50 + 2 * 718 * r_lora)
    assert rows["image_encoder.neck.2"].params == 2 * 250 + 2 * 6 * r_lora
    assert rows["layernorm"].params == 12 * 2 * 2 * 768 + 2 * 2 * 256
    assert rows["pos_embed"].params == 32 * 32 * 768
    assert report.total == exact
    assert abs(report.total - paper) / paper < 0.10
    assert report.base_params == sum(p.numel() for p in vit_b_512.parameters())


def test_cli_prints_the_accounting(capsys: pytest.CaptureFixture) -> None:
    flags = ["--variant", "vit_b", "--image-size", "512", "--adapter", "salt", "--neck"]
    flags += ["--rank", "attn=760", "--rank", "mlp=50", "--rank", "neck=250"]
    assert main(["params", *flags, "--r-lora", "4"]) == 0
    text = capsys.readouterr().out
    assert "image_encoder.blocks.*.attn.qkv" in text and "pos_embed" in text and "layernorm" in text
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "1,003,688" in total and "1.099%" in total
    assert "241M" in text  # the paper's percentages are of SAM + CLIP
    assert main(["params", *flags, "--r-lora", "256", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"] == 9_791_432 and doc["image_size"] == 512 and doc["config"]["r_lora"] == 256


def test_adapter_tensors_stay_under_one_percent_of_vit_b(vit_b_512) -> None:
    """Adapter files hold the trainable tensors; the adapter part is < 1% of SAM for every adapter but `full`.
    (Declared parts add their own size: the 512² position embedding alone is 0.86%.)"""
    base_bytes = 4 * sum(p.numel() for p in vit_b_512.parameters())
    no_extras = {
        f: False for f in ("train_norms", "train_pos_embed", "train_class_tokens", "train_mask_decoder")
    }
    configs = {
        "salt": AdapterConfig(name="salt", r_lora=4, adapt_neck=True, **no_extras),
        "ssam": AdapterConfig(name="ssam", adapt_neck=True, **no_extras),
        "svfit": AdapterConfig(
            name="svfit", rank={"fraction": 1.0}, adapt_neck=True, **no_extras
        ),  # upper bound
        "lora": AdapterConfig(name="lora", r_lora=4, adapt_neck=True, **no_extras),
        "effort": AdapterConfig(name="effort", adapt_neck=True, **no_extras),
        "none": AdapterConfig(name="none", **no_extras),
    }
    assert set(configs) | {"full"} == set(ADAPTERS)
    for name, config in configs.items():
        share = 4 * count_parameters(vit_b_512, config).total / base_bytes
        assert share < 0.01, (name, share)
    full = count_parameters(vit_b_512, AdapterConfig(name="full", train_class_tokens=False)).total
    assert full == sum(p.numel() for p in vit_b_512.image_encoder.parameters())


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_count_equals_what_injection_trains(case: str) -> None:
    config = AdapterConfig(**ADAPTER_CASES[case])
    report = count_parameters(make_tiny(), config, progress=False)
    model = make_tiny()
    inject_adapters(model, config, progress=False)
    assert report.total == sum(p.numel() for p in trainable_parameters(model))


def test_cli_choices_match_the_registry() -> None:
    assert set(ADAPTER_NAMES) == set(ADAPTERS)


def test_top_level_help_lists_params(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "params" in capsys.readouterr().out


@pytest.mark.parametrize("adapter", ["salt", "lora", "none", "full"])
def test_the_full_resolution_branch_is_counted_and_trained_with_every_adapter(adapter: str) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny", hires=True)
    branch = sum(p.numel() for p in model.hires.parameters())
    on = count_parameters(model, AdapterConfig(name=adapter), progress=False)
    off = count_parameters(model, AdapterConfig(name=adapter, train_hires=False), progress=False)
    assert on.total - off.total == branch == HIRES_TINY
    inject_adapters(model, AdapterConfig(name=adapter), progress=False)
    trained = {id(p) for p in trainable_parameters(model)}
    assert all(id(p) in trained for p in model.hires.parameters())
    assert sum(p.numel() for p in trainable_parameters(model)) == on.total


def test_params_cli_counts_the_branch_with_hires(capsys: pytest.CaptureFixture) -> None:
    totals = []
    for extra in ([], ["--hires"]):
        assert main(["params", "--variant", "tiny", "--adapter", "salt", "--json", *extra]) == 0
        totals.append(json.loads(capsys.readouterr().out)["total"])
    assert totals[1] - totals[0] == HIRES_TINY
