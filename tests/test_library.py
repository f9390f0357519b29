"""The adapter library: add/list/remove with the base-hash check, predict --model NAME, swapping adapters on one
base, and the joint-SVD compression (exact at full rank, smaller at lower rank)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from salt_seg.library import (
    AdapterSwitcher,
    Library,
    LibraryModels,
    compress_library,
    format_compression,
    resolve_model,
)
from salt_seg.model.sam import InputPrompt
from salt_seg.preprocessing import Preprocessing
from tests.inference.conftest import copy_run_with_data

S = 32


@pytest.fixture(autouse=True)
def _private(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private SVD cache and library default, never the user's."""
    monkeypatch.setenv("SALT_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "svd_cache"))
    monkeypatch.setenv("SALT_SEG_LIBRARY", str(tmp_path_factory.getbasetemp() / "default_library"))


def make_run(
    root: Path,
    *,
    base_seed: int,
    adapter_seed: int,
    method: str = "salt",
    classes: int = 2,
    nudge: float = 0.0,
) -> Path:
    """A run directory as training writes it, without training: a random `tiny` base saved next to an adapter
    moved off identity (``nudge``: then moved a little more, with another seed: a near twin of the same seed's)."""
    from safetensors.torch import save_file

    from salt_seg.adapters import AdapterConfig, inject_adapters, save_adapter
    from salt_seg.model import build_model
    from salt_seg.model.checkpoint import state_dict_hash

    root.mkdir(parents=True)
    names = {i + 1: f"class{i + 1}" for i in range(classes)}
    record = Preprocessing(intensity="minmax", image_size=S, classes=names, prompt_mode="mixed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(base_seed)
        model = build_model("tiny", image_size=S, num_classes=classes)
        base = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("class_tokens.")}
        save_file(base, str(root / "base.safetensors"))
        config = AdapterConfig(name=method, train_class_tokens=True)
        inject_adapters(model, config, base_hash=state_dict_hash(base), svd_cache=False, progress=False)
        torch.manual_seed(adapter_seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
            if nudge:
                torch.manual_seed(adapter_seed + 1000)
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(nudge * torch.randn_like(p))
    save_adapter(
        root / "adapter.safetensors",
        model,
        config,
        base_variant="tiny",
        base_hash=state_dict_hash(base),
        preprocessing=record,
        class_names=names,
        extra={"base_variant": "tiny", "base_checkpoint": "run:base.safetensors", "step": 1},
    )
    (root / "config.yaml").write_text("model: {variant: tiny}\n")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("library_runs")
    return {
        "liver": make_run(root / "liver", base_seed=7, adapter_seed=1),
        "spleen": make_run(root / "spleen", base_seed=7, adapter_seed=2, classes=3),
        "kidney": make_run(root / "kidney", base_seed=7, adapter_seed=3, method="lora"),
        "other": make_run(root / "other", base_seed=8, adapter_seed=1),
    }


def outputs(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, S, S, generator=g)
    prompts = [InputPrompt(box=torch.tensor([3.0, 4.0, 20.0, 25.0])), InputPrompt(class_id=1)]
    with torch.no_grad():
        return model(images, prompts)[0]


def test_add_list_remove_and_index(runs: dict[str, Path], tmp_path: Path) -> None:
    lib = Library.open(tmp_path / "lib")
    entry = lib.add(runs["liver"], "liver")
    assert (
        entry["method"] == "salt"
        and entry["parameters"] > 0
        and entry["classes"] == {"1": "class1", "2": "class2"}
    )
    lib.add(runs["spleen"] / "adapter.safetensors", "spleen")
    index = json.loads((tmp_path / "lib" / "index.json").read_text())
    assert sorted(index["entries"]) == ["liver", "spleen"]
    assert index["base_hash"] == entry["base_hash"] and index["base_checkpoint"].startswith("bases/")
    assert (tmp_path / "lib" / "liver.safetensors").read_bytes() == (
        runs["liver"] / "adapter.safetensors"
    ).read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        lib.add(runs["spleen"], "liver")
    lib.add(runs["spleen"], "liver", force=True)
    assert lib.entries()["liver"]["classes"] == {"1": "class1", "2": "class2", "3": "class3"}
    lib.remove("liver")
    assert list(lib.entries()) == ["spleen"] and not (tmp_path / "lib" / "liver.safetensors").exists()
    with pytest.raises(ValueError, match="not in the adapter library"):
        lib.remove("liver")
    lib.remove("spleen")
    assert lib.base_hash is None and not (tmp_path / "lib" / "bases").exists()
    lib.add(runs["other"], "other")  # an empty library takes any base again
    assert lib.base_hash != entry["base_hash"]


def test_the_library_refuses_an_adapter_of_another_base(runs: dict[str, Path], tmp_path: Path) -> None:
    lib = Library.open(tmp_path / "lib")
    first = lib.add(runs["liver"], "liver")
    with pytest.raises(ValueError) as err:
        lib.add(runs["other"], "other")
    from salt_seg.adapters import read_adapter_metadata

    msg = str(err.value)
    other_hash = read_adapter_metadata(runs["other"] / "adapter.safetensors")["base_hash"]
    assert str(runs["other"] / "adapter.safetensors") in msg
    assert first["base_hash"][:12] in msg and other_hash[:12] in msg and other_hash != first["base_hash"]
    assert lib.base_hash == first["base_hash"] and list(lib.entries()) == ["liver"]


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x.safetensors", "a b", "x" * 65])
def test_names_are_validated(runs: dict[str, Path], tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="library name"):
        Library.open(tmp_path / "lib").add(runs["liver"], bad)


def test_cli_add_list_remove_and_refusal(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    from salt_seg.cli import main

    lib = str(tmp_path / "lib")
    assert main(["library", "add", str(runs["liver"]), "--name", "liver", "--library", lib]) == 0
    assert main(["library", "list", "--library", lib]) == 0
    assert "liver" in capsys.readouterr().out
    assert main(["library", "add", str(runs["other"]), "--name", "other", "--library", lib]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "salt-seg library: error:" in err[0] and "holds adapters of base" in err[0]
    assert main(["library", "remove", "nope", "--library", lib]) == 2
    assert main(["library", "remove", "liver", "--library", lib]) == 0
    assert main(["library", "list", "--library", lib]) == 0
    assert "empty library" in capsys.readouterr().out


def test_predict_model_name_resolves_a_library_entry(runs: dict[str, Path], tmp_path: Path) -> None:
    from salt_seg.inference import load_inference_model

    lib = Library.open(tmp_path / "lib")
    lib.add(runs["liver"], "liver")
    path, checkpoint = resolve_model("liver", None, lib.root)
    assert path == str(lib.root / "liver.safetensors") and checkpoint == lib.base_checkpoint()
    assert resolve_model(str(runs["liver"]), None, lib.root) == (str(runs["liver"]), None)  # a path wins
    with pytest.raises(ValueError, match="entries: liver"):
        resolve_model("spleen", None, lib.root)
    fresh = load_inference_model(runs["liver"]).model
    via_name = load_inference_model(path, checkpoint=checkpoint).model
    torch.testing.assert_close(outputs(via_name), outputs(fresh), rtol=0, atol=0)


def test_switching_adapters_on_one_base_equals_loading_fresh(runs: dict[str, Path], tmp_path: Path) -> None:
    from salt_seg.inference import load_inference_model

    lib = Library.open(tmp_path / "lib")
    for name in ("liver", "spleen", "kidney"):
        lib.add(runs[name], name)
    models = LibraryModels(lib)
    first = models.load("liver")
    model_id = id(first.model)
    for name in ("spleen", "kidney", "liver"):  # salt -> salt (more class tokens) -> lora -> salt
        loaded = models.load(name)
        assert id(loaded.model) == model_id and loaded.meta["library_name"] == name
        fresh = load_inference_model(runs[name]).model
        torch.testing.assert_close(outputs(loaded.model), outputs(fresh), rtol=0, atol=0)
        assert loaded.class_names == load_inference_model(runs[name]).class_names
    assert models.base_loads == 1


def test_switcher_refuses_another_base(runs: dict[str, Path]) -> None:
    from salt_seg.model.checkpoint import load_base_model

    model, info = load_base_model("tiny", runs["liver"] / "base.safetensors", image_size=S, num_classes=2)
    switcher = AdapterSwitcher(model, info.content_hash if info else None)
    with pytest.raises(ValueError, match="trained on base weights"):
        switcher.activate(runs["other"] / "adapter.safetensors")
    switcher.activate(runs["liver"] / "adapter.safetensors")
    assert switcher.active == runs["liver"] / "adapter.safetensors"


def test_compress_full_rank_reproduces_and_lower_ranks_shrink(runs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    lib = Library.open(tmp_path / "lib")
    for name in ("liver", "spleen", "kidney"):
        lib.add(runs[name], name)
    out = tmp_path / "compressed.safetensors"
    report = compress_library(lib, [None, 16, 8, 4, 1], out=out)
    full, *lower = report.rows
    for name in report.names:
        assert full["weight_error"][name] < 1e-6, full
        assert full["output_error"][name] < 1e-5, full
    sizes = [row["bytes"] for row in report.rows]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[-2] < sizes[1]
    assert sizes[-1] < report.dense_bytes
    errors = [row["weight_error"]["liver"] for row in lower]
    assert errors == sorted(errors) and errors[-1] > 1e-3  # rank 1 loses information
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
        nbytes = sum(4 * math.prod(f.get_slice(k).get_shape()) for k in keys)
    assert meta["rank"] == "1" and json.loads(meta["entries"]) == ["kidney", "liver", "spleen"]
    assert nbytes == sizes[-1]  # the stated size is what the file holds


def test_copies_share_the_base_read_and_are_left_alone(runs: dict[str, Path], tmp_path: Path) -> None:
    lib = Library.open(tmp_path / "lib")
    for name in ("liver", "kidney"):
        lib.add(runs[name], name)
    models = LibraryModels(lib)
    shared = models.load("kidney")
    before = outputs(shared.model)
    liver = models.load("liver", copy=True)
    torch.testing.assert_close(outputs(shared.model), before, rtol=0, atol=0)  # a copy leaves the shared one
    expected = outputs(liver.model)
    kidney = models.load("kidney", copy=True)
    assert kidney.model is not liver.model and models.base_loads == 1
    models.load("kidney")  # switching the shared model does not touch the copies
    torch.testing.assert_close(outputs(liver.model), expected, rtol=0, atol=0)


def test_the_viewer_lists_library_entries(runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from salt_seg.inference import load_inference_model
    from salt_seg_apps.viewer.app import ViewerConfig, default_registry

    lib = Library.open(tmp_path / "lib")
    for name in ("liver", "spleen"):
        lib.add(runs[name], name)
    registry = default_registry(ViewerConfig(library=str(lib.root), builtin=False))
    assert registry.names == ["library: liver", "library: spleen"]
    spleen = registry.get("library: spleen")
    torch.testing.assert_close(
        outputs(spleen.model), outputs(load_inference_model(runs["spleen"]).model), rtol=0, atol=0
    )
    assert registry.get("library: liver").model is not spleen.model


def test_compress_cli_prints_the_rank_table(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    from salt_seg.cli import main

    lib = str(tmp_path / "lib")
    for name in ("liver", "spleen"):
        assert main(["library", "add", str(runs[name]), "--name", name, "--library", lib]) == 0
    capsys.readouterr()
    assert (
        main(["library", "compress", "--library", lib, "--rank", "full", "--rank", "8", "--rank", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "2 adapters" in out and "no Dice: no evaluation data for liver, spleen" in out
    rows = [line.split() for line in out.splitlines() if line.split()[2:3] == ["MiB"]]
    assert [r[0] for r in rows] == ["full", "8", "2"]
    assert main(["library", "compress", "--library", lib, "--rank", "-1"]) == 2
    assert "--rank must be >= 0" in capsys.readouterr().err


def test_predict_cli_takes_a_library_name(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    import numpy as np

    from salt_seg.cli import main
    from tests.data.conftest import write_nifti

    lib = tmp_path / "lib"
    assert main(["library", "add", str(runs["liver"]), "--name", "liver", "--library", str(lib)]) == 0
    volume = write_nifti(
        tmp_path / "case.nii.gz", np.random.default_rng(0).random((S, S, 2)).astype(np.float32)
    )
    common = ["--input", str(volume), "--device", "cpu", "--no-progress", "--library", str(lib)]
    assert main(["predict", "--model", "liver", "--out", str(tmp_path / "by_name"), *common]) == 0
    assert main(["predict", "--model", str(runs["liver"]), "--out", str(tmp_path / "by_path"), *common]) == 0
    a = (tmp_path / "by_name" / "case.nii.gz").read_bytes()
    assert a == (tmp_path / "by_path" / "case.nii.gz").read_bytes()
    capsys.readouterr()
    assert main(["predict", "--model", "nope", "--out", str(tmp_path / "x"), *common]) == 2
    assert "'nope' is not in the adapter library" in capsys.readouterr().err


# -- Dice retained per task, clustering ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from salt_seg.data.recipes import build_synthetic_shapes

    data = tmp_path_factory.mktemp("shapes") / "ds"
    build_synthetic_shapes(data, n_cases=4, size=S, depth=8)
    return data


def run_dice(run: Path) -> float:
    """Dice of the run as ``salt-seg evaluate --model RUN`` scores it (the adapter loaded afresh)."""
    from salt_seg.evaluation.model_eval import evaluate_run

    return float(evaluate_run(run, progress=False).summary["volume"]["all"]["dice"]["mean"])


def test_compress_reports_dice_retained_exactly_one_at_full_rank(
    runs: dict[str, Path], shapes: Path, tmp_path: Path
) -> None:
    from salt_seg.commands.library import _scorer

    scored = {n: copy_run_with_data(runs[n], shapes, tmp_path / n) for n in ("liver", "kidney")}
    lib = Library.open(tmp_path / "lib")
    for name, run in scored.items():
        assert lib.add(run, name)["run"] == str(run.resolve())
    lib.add(runs["spleen"], "spleen")  # no evaluation data
    report = compress_library(lib, [None, 4, 1, 0], scorers={n: _scorer(r, "cpu") for n, r in scored.items()})
    assert report.unscored == ["spleen"] and sorted(report.dice) == ["kidney", "liver"]
    full, r4, r1, none = report.rows
    assert none["bytes"] == report.private_bytes  # rank 0: the updates dropped, the private tensors kept
    assert all(e == 1.0 for e in none["weight_error"].values())
    for name, run in scored.items():
        expected = run_dice(run)
        assert expected > 0.01  # a random adapter, but not a blank prediction: the ratio is defined
        assert report.dice[name] == expected  # the library's model scores as the run's own
        assert full["dice"][name] == expected and full["retained"][name] == 1.0
        for row in (r4, r1, none):
            assert 0.0 <= row["dice"][name] <= 1.0
            assert row["retained"][name] == pytest.approx(row["dice"][name] / expected)
    assert "spleen" not in full["dice"] and full["weight_error"]["spleen"] < 1e-6
    assert full["bytes"] > r4["bytes"] > r1["bytes"] > none["bytes"]
    text = format_compression(report)
    assert "no Dice: no evaluation data for spleen" in text
    table = text[text.index("retained = Dice") :].splitlines()
    assert table[2].split()[0] == "adapter" and table[3].split()[:1] == ["full"]
    assert "(1.000)" in table[3]


def test_cli_dice_and_plot(runs: dict[str, Path], shapes: Path, tmp_path: Path, capsys) -> None:
    from salt_seg.cli import main

    liver = copy_run_with_data(runs["liver"], shapes, tmp_path / "liver")
    lib = str(tmp_path / "lib")
    assert main(["library", "add", str(liver), "--name", "liver", "--library", lib]) == 0
    assert main(["library", "add", str(runs["spleen"]), "--name", "spleen", "--library", lib]) == 0
    capsys.readouterr()
    plot = tmp_path / "curve.png"
    rc = main(["library", "compress", "--library", lib, "--rank", "2", "--dice", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "retained = Dice at the rank" in out and "no Dice: no evaluation data for spleen" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --eval names the run explicitly (here: the same run) and gives the same Dice
    rc = main(["library", "compress", "--library", lib, "--rank", "2", "--eval", f"liver={liver}"])
    assert rc == 0 and capsys.readouterr().out == out.replace(f"wrote {plot}\n", "")


def test_cli_eval_errors_name_the_problem(
    runs: dict[str, Path], shapes: Path, tmp_path: Path, capsys
) -> None:
    from salt_seg.cli import main

    lib = str(tmp_path / "lib")
    for name in ("liver", "spleen"):
        assert main(["library", "add", str(runs[name]), "--name", name, "--library", lib]) == 0
    capsys.readouterr()
    base = ["library", "compress", "--library", lib, "--rank", "2"]
    no_data = tmp_path / "no_data"
    no_data.mkdir()
    (no_data / "split.json").write_text("{}")
    (no_data / "config.yaml").write_text("data: {path: /nonexistent/ds}\n")
    cases = {
        ("--eval", "liver"): "--eval liver: expected NAME=RUN_DIR",
        ("--eval", f"nope={runs['liver']}"): "'nope' is not in the adapter library",
        ("--eval", f"liver={runs['liver']}"): f"{runs['liver']} has no split.json",
        ("--eval", f"liver={tmp_path / 'missing'}"): "is not a run directory",
        ("--eval", f"liver={no_data}"): "the dataset /nonexistent/ds named in",
        ("--plot", str(tmp_path / "x.png")): "no entry to score",
        ("--clusters", "3"): "--clusters must be between 1 and the library's 2 entries, got 3",
    }
    for extra, message in cases.items():
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("salt-seg library: error: ") and message in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_clusters_group_similar_adapters_and_reproduce_at_full_rank(tmp_path: Path) -> None:
    from safetensors import safe_open

    root = tmp_path / "runs"
    lib = Library.open(tmp_path / "lib")
    lib.add(make_run(root / "a", base_seed=7, adapter_seed=1), "a")
    lib.add(make_run(root / "b", base_seed=7, adapter_seed=5, method="lora"), "b")
    lib.add(make_run(root / "c", base_seed=7, adapter_seed=1, nudge=1e-3), "c")  # a's near twin
    out = tmp_path / "compressed.safetensors"
    report = compress_library(lib, [None, 8, 2], clusters=2, out=out)
    assert report.groups == [["a", "c"], ["b"]]
    d = report.distances
    assert d is not None and d[0][2] < 1e-3 and min(d[0][1], d[1][2]) > 0.5
    full, r8, r2 = report.rows
    for name in report.names:
        assert full["weight_error"][name] < 1e-6, full
        assert full["output_error"][name] < 1e-5, full
    assert full["bytes"] > r8["bytes"] > r2["bytes"]
    for row in report.rows:
        assert row["bytes"] == report.private_bytes + sum(row["cluster_bytes"])
    # the stated size is what the file holds; per group and layer (out + K_g·fan_in)·R numbers
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert json.loads(meta["groups"]) == [["a", "c"], ["b"]]
    assert sum(4 * math.prod(s) for s in shapes.values()) == r2["bytes"]
    u = {k: s for k, s in shapes.items() if k.startswith("U/")}
    assert {k.split("/")[1] for k in u} == {"0", "1"} and all(s[1] <= 2 for s in u.values())
    one = compress_library(lib, [2])  # one group: a basis per layer for all three
    assert one.groups == [["a", "b", "c"]] and one.rows[0]["bytes"] < r2["bytes"]


def test_an_adapter_of_a_builtin_base_loads_from_the_library(tmp_path: Path) -> None:
    """The library records a built-in base by name; loading an entry resolves the name to the shipped file."""
    from salt_seg.adapters import AdapterConfig, inject_adapters, save_adapter
    from salt_seg.inference import load_inference_model
    from salt_seg.model.builtin import resolve_checkpoint
    from salt_seg.model.checkpoint import load_base_model

    model, info = load_base_model(None, resolve_checkpoint("builtin"), num_classes=2)
    assert info is not None
    config = AdapterConfig(name="lora", train_class_tokens=True)
    inject_adapters(model, config, base_hash=info.content_hash, svd_cache=False, progress=False)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    names = {1: "a", 2: "b"}
    adapter = tmp_path / "run" / "adapter.safetensors"
    adapter.parent.mkdir()
    save_adapter(
        adapter,
        model,
        config,
        base_variant=info.variant or "tiny",
        base_hash=info.content_hash,
        preprocessing=Preprocessing(intensity="minmax", image_size=model.image_size, classes=names),
        class_names=names,
        extra={"base_variant": "tiny", "base_checkpoint": "builtin", "step": 1},
    )
    lib = Library.open(tmp_path / "lib")
    lib.add(adapter, "a")
    assert lib.index()["base_checkpoint"] == "builtin"
    got = LibraryModels(lib).load("a").model
    s = got.image_size
    images = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = got(images, [InputPrompt(class_id=1)])[0]
        b = load_inference_model(adapter).model(images, [InputPrompt(class_id=1)])[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
