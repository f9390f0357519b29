"""Continual training (``train.continue_from``): the OSFT projection, class tokens of the earlier task kept, the
union of classes in the adapter, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from salt_seg.adapters import load_adapter, read_adapter_metadata
from salt_seg.configio import from_dict
from salt_seg.training.config import ExperimentConfig
from salt_seg.training.continual import class_mapping
from salt_seg.training.loop import train
from salt_seg.training.osft import OSFT, project, retained_rank
from tests.training.conftest import SIZE, synthetic_data


def config(adapter: str = "full", **train_section) -> ExperimentConfig:
    doc = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": SIZE},
        "adapter": {"name": adapter, "train_mask_decoder": True},
        "data": {"augment": False, "cache": False},
        "preprocessing": {"intensity": "none", "image_size": SIZE, "classes": {1: "object", 2: "second"}},
        "train": {
            "steps": 4,
            "batch_size": 2,
            "lr": 2e-3,
            "warmup_steps": 1,
            "val_every": 2,
            "prompt": "auto",
            "overlays": 0,
            **train_section,
        },
    }
    if adapter == "salt":
        doc["adapter"]["r_lora"] = 4
    return from_dict(ExperimentConfig, doc)


def test_retained_rank_follows_importance_and_spectrum() -> None:
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0, 0.0])
    assert retained_rank(s, 0.0, 0.1, 0.8) == 1  # ceil(0.1 * 10)
    assert retained_rank(s, 1.0, 0.1, 0.8) == 8  # ceil(0.8 * 10), all above the null directions
    assert retained_rank(s, 0.5, 0.1, 0.8) == 5  # ceil(0.45 * 10)
    assert retained_rank(s, 1.0, 0.1, 1.0) == 8  # the two zero singular values are never protected


def test_projection_removes_both_protected_sides() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(9, 3, generator=g, dtype=torch.float64))[0]
    grad = torch.randn(12, 9, generator=g, dtype=torch.float64)
    p = project(grad, u, v)
    assert torch.allclose(u.T @ p, torch.zeros(3, 9, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p @ v, torch.zeros(12, 3, dtype=torch.float64), atol=1e-12)
    # the paper's four-term form
    four = grad - u @ u.T @ grad - grad @ v @ v.T + u @ u.T @ grad @ v @ v.T
    assert torch.allclose(p, four, atol=1e-12)


def test_osft_step_keeps_outputs_of_protected_inputs() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 24)
    osft = OSFT([("weight", layer.weight)], {"weight": 1.0}, min_retain=0.1, max_retain=0.5)
    (w,) = osft.weights
    assert w.rank == 12  # ceil(0.5 * 24)
    x = torch.randn(16, w.rank) @ w.v.T  # inputs in the protected right-singular subspace
    other = torch.randn(16, 32)
    with torch.no_grad():
        before_x, before_other = layer.weight @ x.T, layer.weight @ other.T
    opt = torch.optim.AdamW(
        [layer.weight], lr=0.05, weight_decay=0.1
    )  # weight decay would leak: projected too
    for _ in range(3):
        opt.zero_grad()
        loss = (layer(torch.randn(8, 32)) - torch.randn(8, 24)).pow(2).mean()
        loss.backward()
        osft.project_gradients()
        osft.snapshot()
        opt.step()
        osft.project_updates()
    with torch.no_grad():
        after_x, after_other = layer.weight @ x.T, layer.weight @ other.T
        # the protected output directions are never written either
        assert (w.u.T @ (after_other - before_other)).abs().max() < 1e-5
    assert (after_x - before_x).abs().max() < 1e-5
    assert (after_other - before_other).abs().max() > 1e-2  # the rest of the layer did learn


def test_class_mapping_appends_after_earlier_classes() -> None:
    assert class_mapping({1: "a", 2: "b", 3: "c"}, [2, 1, 7]) == {1: 4, 2: 5, 7: 6}


@pytest.mark.parametrize("method", ["sequential", "osft"])
def test_continued_model_answers_both_tasks(tmp_path, method) -> None:
    task_a, task_b = synthetic_data(8, 4), synthetic_data(8, 4)
    task_b.train.seed = 7  # another draw of the generator stands for the new dataset
    train(config(), tmp_path / "a", data=task_a, progress=False)
    cfg_b = config(continue_from=str(tmp_path / "a"), continual=method)
    res = train(cfg_b, tmp_path / "b", data=task_b, progress=False)
    assert res.steps_done == 4 and not math.isnan(res.best_val_dice)

    a, b = (
        load_file(tmp_path / "a" / "adapter.safetensors"),
        load_file(tmp_path / "b" / "adapter.safetensors"),
    )
    assert b["class_tokens.weight"].shape[0] == 4
    assert torch.equal(
        b["class_tokens.weight"][:2], a["class_tokens.weight"]
    )  # task A's tokens bit-identical
    assert not torch.equal(b["class_tokens.weight"][2:], b["class_tokens.weight"][:2])
    meta = read_adapter_metadata(tmp_path / "b" / "adapter.safetensors")
    assert meta["class_names"] == {"1": "object", "2": "second", "3": "object", "4": "second"}
    tasks = meta["extra"]["continual"]["tasks"]
    assert meta["extra"]["continual"]["method"] == method
    assert [t["class_map"] for t in tasks] == [{"1": 1, "2": 2}, {"1": 3, "2": 4}]
    assert [t["run"] for t in tasks] == [str(tmp_path / "a"), str(tmp_path / "b")]

    # the continued model loads like any run and answers task A's classes by their ids
    from salt_seg.inference.loading import load_inference_model
    from salt_seg.model.sam import InputPrompt

    loaded = load_inference_model(tmp_path / "b")  # what predict, evaluate and the viewer load
    model = loaded.model
    assert model.num_classes == 4
    assert loaded.class_names == {1: "object", 2: "second", 3: "object", 4: "second"}
    image = task_a.val[0]["image"][None]
    prompts = [InputPrompt(class_id=c) for c in (1, 2, 3, 4)]
    with torch.no_grad():
        logits, _ = model(image, prompts, [0, 0, 0, 0])
    assert logits.shape[0] == 4 and torch.isfinite(logits).all()

    if method == "osft":  # every constrained weight moved only outside its protected subspaces
        from salt_seg.training.model import build_training_model

        ref = build_training_model(cfg_b, 4, checkpoint=str(tmp_path / "a" / "base.safetensors"))
        ref.model.set_num_classes(2)
        load_adapter(tmp_path / "a" / "adapter.safetensors", ref.model, progress=False)
        named = dict(ref.model.named_parameters())
        osft = OSFT([(n, named[n]) for n in b if named.get(n) is not None and named[n].ndim == 2])
        last = load_file(
            tmp_path / "b" / "checkpoints" / "step-000004" / "adapter.safetensors"
        )  # trained 4 steps
        assert torch.equal(last["class_tokens.weight"][:2], a["class_tokens.weight"])
        moved = 0
        for w in osft.weights:
            if w.name.startswith("class_tokens.") or w.rank == 0:
                continue
            delta = last[w.name] - a[w.name]
            moved += int(delta.abs().max() > 0)
            # the run protects at least the leading singular direction of every weight (min_retain > 0)
            top_u, top_v = w.u[:, :1], w.v[:, :1]
            assert (top_u.T @ delta).abs().max() < 1e-5, w.name
            assert (delta @ top_v).abs().max() < 1e-5, w.name
        assert moved > 0


def test_continual_run_resumes_bit_identical(tmp_path) -> None:
    task_a, task_b = synthetic_data(8, 4), synthetic_data(8, 4)
    train(config(), tmp_path / "a", data=task_a, progress=False)
    cfg_b = config(continue_from=str(tmp_path / "a"), continual="osft")
    train(cfg_b, tmp_path / "full", data=task_b, progress=False)
    train(cfg_b, tmp_path / "part", data=task_b, progress=False, stop_after=2)
    train(cfg_b, tmp_path / "part", data=task_b, progress=False, resume=True)
    full, part = (
        load_file(tmp_path / "full" / "adapter.safetensors"),
        load_file(tmp_path / "part" / "adapter.safetensors"),
    )
    assert full.keys() == part.keys()
    for k in full:
        assert torch.equal(full[k], part[k]), k


def test_continue_refuses_another_adapter_and_osft_on_salt(tmp_path) -> None:
    task = synthetic_data(8, 4)
    train(config(), tmp_path / "a", data=task, progress=False)
    with pytest.raises(ValueError, match="adapter.name differs"):
        train(config("salt", continue_from=str(tmp_path / "a")), tmp_path / "b", data=task, progress=False)
    assert not (tmp_path / "b").exists()  # refused before anything was trained: --out left as it was
    train(config("salt"), tmp_path / "s", data=task, progress=False)
    with pytest.raises(ValueError, match="osft constrains full fine-tuning"):
        train(
            config("salt", continue_from=str(tmp_path / "s"), continual="osft"),
            tmp_path / "c",
            data=task,
            progress=False,
        )


def test_cli_continue_trains_on_a_new_dataset(tmp_path, capsys) -> None:
    import yaml

    from salt_seg.cli import main
    from salt_seg.data.recipes import build_synthetic_shapes

    build_synthetic_shapes(tmp_path / "ds", n_cases=6, size=64, depth=10, shots=2)
    doc = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": 128},
        "adapter": {"name": "full"},
        "data": {"path": str(tmp_path / "ds"), "holdout": "volumes", "shots": 2, "val": 1, "test": 2},
        "preprocessing": {"intensity": "minmax", "image_size": 128},
        "train": {"steps": 2, "batch_size": 2, "val_every": 2, "prompt": "auto", "overlays": 0},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    args = ["--no-progress", "--threads", "1"]
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a"), *args]) == 0
    rc = main(
        [
            "train",
            "--continue",
            str(tmp_path / "a"),
            "--out",
            str(tmp_path / "b"),
            "--set",
            "train.continual=osft",
        ]
        + args
    )
    assert rc == 0, capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["train"]["continue_from"] == str(tmp_path / "a") and saved["train"]["continual"] == "osft"
    meta = read_adapter_metadata(tmp_path / "b" / "adapter.safetensors")
    assert meta["class_names"] == {
        "1": "ellipsoid",
        "2": "cuboid",
        "3": "cylinder",
        "4": "ellipsoid",
        "5": "cuboid",
        "6": "cylinder",
    }
    # evaluate scores the new dataset's classes through their ids in the continued model
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(tmp_path / "b"), "--out", str(out), "--threads", "1"]) == 0
    assert "test case(s) of" in capsys.readouterr().out
    scored = json.loads((out / "evaluation.json").read_text())["summary"]["slice"]
    assert {k for k in scored if k != "all"} == {"4", "5", "6"}
    # a path that is not a run: one line, exit 2 (the CLI's rule for bad input)
    assert main(["train", "--continue", str(tmp_path / "ds"), "--out", str(tmp_path / "c"), *args]) != 0
    assert "not a run directory" in capsys.readouterr().err
