"""The model a run trains (salt_seg/training/model.py) and ``salt-seg params --config``, which counts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salt_seg.cli import main

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(scope="module")
def shapes3(tmp_path_factory) -> Path:
    """Six small volumes with three classes (ellipsoid, cuboid, cylinder)."""
    from salt_seg.data.recipes import build_synthetic_shapes

    out = tmp_path_factory.mktemp("shapes3") / "ds"
    build_synthetic_shapes(out, n_cases=6, size=64, depth=10, shots=2)
    return out


def _params_json(argv: list[str], capsys) -> dict:
    assert main(["params", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_params_config_counts_what_train_reports_for_the_shipped_config(tmp_path, shapes3, capsys) -> None:
    config = str(CONFIGS / "builtin_salt.yaml")
    # the shipped config on another dataset; only settings that do not change what trains are overridden
    data = [f"data.path={shapes3}", "data.holdout=volumes", "data.protocol=block", "data.shots=1"]
    data += ["data.val=1", "data.test=1", "data.cache=false", "data.augment=false"]
    quick = ["train.steps=1", "train.val_every=1", "train.batch_size=1", "train.overlays=0"]
    sets = [x for item in [*data, *quick] for x in ("--set", item)]
    counted = _params_json(["--config", config, *sets], capsys)
    run = tmp_path / "run"
    assert (
        main(["train", "--config", config, *sets, "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    )
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert counted["total"] == summary["trainable_parameters"]
    assert json.loads((run / "provenance.json").read_text())["trainable_parameters"] == counted["total"]
    groups = {r["group"]: r["params"] for r in counted["rows"]}
    # what the adapter-only count missed: the decoder (train_mask_decoder), 3 class tokens and the hires branch
    assert counted["num_classes"] == 3 and groups["class_tokens"] == 3 * 128
    assert groups["mask_decoder"] > 0 and groups["hires"] > 0
    assert (counted["variant"], counted["image_size"], counted["checkpoint"]) == ("tiny", 256, "builtin")
    bare = _params_json(["--variant", "tiny", "--image-size", "256", "--adapter", "salt"], capsys)
    assert bare["total"] < counted["total"] - groups["mask_decoder"]  # the old, misleading answer


def test_injected_model_trains_exactly_the_counted_parameters() -> None:
    from salt_seg.adapters import trainable_parameters
    from salt_seg.adapters.params import count_parameters
    from salt_seg.training.config import load_config
    from salt_seg.training.model import build_training_model

    sets = [
        "model.image_size=128",
        "model.hires=true",
        "train.prompt=auto",
        "adapter.train_mask_decoder=true",
    ]
    cfg = load_config(None, [*sets, "adapter.r_lora=2"])
    bare = build_training_model(cfg, 2, inject=False)
    report = count_parameters(bare.model, cfg.adapter, progress=False)
    injected = build_training_model(cfg, 2)
    assert injected.base_hash == bare.base_hash  # same seed, same random base
    assert sum(p.numel() for p in trainable_parameters(injected.model)) == report.total
    assert injected.model.num_classes == 2 and injected.model.hires is not None
    boxes = build_training_model(load_config(None, ["train.prompt=box", "model.image_size=128"]), 2)
    assert boxes.model.num_classes == 0  # box prompts train no class tokens


def test_params_config_refuses_model_flags_and_explains_missing_classes(tmp_path, capsys) -> None:
    config = str(CONFIGS / "builtin_salt.yaml")
    assert main(["params", "--config", config, "--variant", "tiny", "--r-lora", "4"]) == 2
    err = capsys.readouterr().err
    assert "--variant, --r-lora: with --config the model and adapter come from the config" in err
    assert main(["params", "--config", config, "--set", f"data.path={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --num-classes N" in err and "train.prompt auto" in err
    counted = _params_json(
        ["--config", config, "--set", f"data.path={tmp_path / 'none'}", "--num-classes", "5"], capsys
    )
    assert (
        counted["num_classes"] == 5
        and {r["group"]: r["params"] for r in counted["rows"]}["class_tokens"] == 640
    )
