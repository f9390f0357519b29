"""bench/bench_adapters.py's floor arithmetic (issue 16, item 1) on small shapes: the parts add up as stated."""

from __future__ import annotations

import pytest

from tests.bench.test_baselines import _load


@pytest.fixture(autouse=True)
def _svd_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALT_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "svd_cache"))


def test_floor_is_the_cheapest_forms_products() -> None:
    bench = _load("bench_adapters")
    p = bench._floor_parts(48, 64, 40, 32, repeats=1)  # k = 48, r = 40 of 48, residual 8 > r_lora 4
    forms = {name: p[f"floor_{name}"] for name in ("svd_basis", "dense", "factored")}
    assert p["floor_salt"] == min(forms.values()) and p["floor_form"] == min(forms, key=forms.__getitem__)
    assert p["floor_svd_basis"] == pytest.approx(p["x_V"] + p["g_U"] + p["gy_U"] + p["gh_V"])
    assert p["floor_plain"] == pytest.approx(p["x_W"] + p["gy_W"])
    assert p["floor_lora"] > p["floor_plain"] and p["floor_factored"] > p["floor_plain"]
    assert p["salt_picks"] in ("svd_basis", "dense", "factored")


def test_encoder_token_counts_and_summary() -> None:
    bench = _load("bench_adapters")
    counts = bench._encoder_linear_tokens("tiny", 64, 1)
    kinds = {kind for kind, *_ in counts}
    assert kinds == {"qkv", "proj", "lin1", "lin2"}
    per_kind = {k: sum(c for (kind, *_), c in counts.items() if kind == k) for k in kinds}
    assert len(set(per_kind.values())) == 1  # one of each per block
    mlp_tokens = {n for (kind, _i, _o, n) in counts if kind == "lin1"}
    attn_tokens = {n for (kind, _i, _o, n) in counts if kind == "qkv"}
    assert mlp_tokens == {(64 // 16) ** 2} and min(attn_tokens) >= max(mlp_tokens)  # windows are padded
    floor = {"salt_layers_s": 3.0, "lora_config_layers_s": 2.0, "salt_floor_s": 2.5}
    enc = {"train_step_s": {"lora_qkv": 4.0, "salt": 5.2}}
    s = bench.floor_summary(floor, enc)
    assert s["measured_ratio"] == pytest.approx(1.3)
    assert s["predicted_ratio_from_layers"] == pytest.approx(1.25)
    assert s["floor_ratio"] == pytest.approx(1.125)
