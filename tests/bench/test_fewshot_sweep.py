"""bench/fewshot.py's nnU-Net rows and equal-wall-clock runs, and how bench/fewshot_report.py shows them (issue 12)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.bench.test_baselines import _load


def _nnunet_result(out: Path) -> None:
    out.mkdir(parents=True)
    per_slice = [
        {"case": "mni152", "slice": 29, "class": 1, "status": "both_present", "dice": 0.9},
        {"case": "mni152", "slice": 29, "class": 2, "status": "both_present", "dice": 0.5},
        {"case": "mni152", "slice": 30, "class": 1, "status": "both_present", "dice": 0.7},
        {"case": "mni152", "slice": 30, "class": 2, "status": "both_empty", "dice": None},
    ]
    result = {
        "trainer": "nnUNetTrainer_5epochs",
        "steps": 1250,
        "per_class": {
            "1": {"name": "a", "dice": {"mean": 0.8, "std": 0.1, "n": 2}},
            "2": {"name": "b", "dice": {"mean": 0.5, "std": 0.0, "n": 1}},
        },
        "per_slice": per_slice,
        "seconds": {"train": 100.0, "total": 120.0},
    }
    (out / "result.json").write_text(json.dumps(result))


def test_nnunet_row_from_a_finished_run_pools_slices_and_pairs_with_the_report(tmp_path: Path) -> None:
    sweep, report = _load("fewshot"), _load("fewshot_report")
    out = tmp_path / "runs" / "mni152-tissue" / "sparse" / "shots5" / "seed0" / "nnunet"
    _nnunet_result(out)
    opts = argparse.Namespace(base="builtin", nnunet_trainer="nnUNetTrainer_5epochs", nnunet_threads=1)
    split = {"axis": 2, "val": 0.2, "test": 0.4, "protocol": "sparse", "guard_mm": 10.0}
    # a finished run is scored again, not retrained: the dataset folder is never read
    row = sweep.nnunet_row(tmp_path / "absent", 5, 0, 600, out, split, opts)
    assert row["method"] == "nnunet" and row["eval_prompt"] == "dense" and row["time_limit"] == 0.0
    assert row["steps_done"] == 1250 and row["train_seconds"] == 100.0 and row["total_seconds"] == 120.0
    # "all" pools the slices as evaluate does: (0.8 * 2 + 0.5 * 1) / 3
    assert row["summary"]["slice"]["all"]["dice"]["mean"] == pytest.approx(0.7)
    assert row["summary"]["slice"]["2"]["dice"]["mean"] == 0.5
    # the per-slice file the paired bootstrap reads; a pair empty in both is not scored (None)
    pairs = report.per_slice({}, out, "box")  # a row without scores: the folder
    assert pairs == {
        ("mni152", "1", "29"): 0.9,
        ("mni152", "2", "29"): 0.5,
        ("mni152", "1", "30"): 0.7,
        ("mni152", "2", "30"): None,
    }


def _prepared_dataset(tmp_path: Path) -> None:
    """A data root whose mni152-tissue counts as prepared (the sweep then prepares nothing)."""
    data = tmp_path / "data" / "mni152-tissue"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text("{}")


def _report_argv(results: Path, runs: Path, tmp_path: Path) -> list[str]:
    """``bench/fewshot_report.py``'s command line over one results file (the plot in tmp_path)."""
    return [
        "fewshot_report.py",
        "--results",
        str(results),
        "--runs",
        str(runs),
        "--plot",
        str(tmp_path / "p.png"),
    ]


def _row(method: str, seed: int, dice: float, time_limit: float = 0.0, steps_done: int = 300) -> dict:
    return {
        "method": method,
        "dataset": "mni152-tissue",
        "shots": 5,
        "seed": seed,
        "steps": 600,
        "eval_prompt": "dense" if method == "floor" else "auto",
        "split": {"protocol": "sparse", "guard_mm": 10.0},
        "base": "builtin",
        "time_limit": time_limit,
        "steps_done": steps_done,
        "summary": {"slice": {"all": {"dice": {"mean": dice}}}},
    }


def test_report_puts_equal_wall_clock_runs_in_a_column_not_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _load("fewshot_report")
    rows = [
        _row("salt", 0, 0.80),
        _row("salt", 1, 0.90),
        _row("none", 0, 0.70),
        _row("floor", 0, 0.60),
        _row("salt", 0, 0.75, time_limit=120, steps_done=210),
        _row("salt", 1, 0.85, time_limit=120, steps_done=190),
    ]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = _report_argv(results, tmp_path, tmp_path)
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("| method"))
    assert header.endswith("| Dice at 120 s (equal wall-clock; steps) |")
    salt = [ln for ln in lines if ln.startswith("| salt |")]
    assert len(salt) == 1  # the timed runs are not a second SALT row
    cells = [c.strip() for c in salt[0].strip("|").split("|")]
    assert cells[1] == "2" and cells[2] == "0.850 ± 0.071"  # converged: the two untimed seeds
    assert cells[-1] == "0.800 ± 0.071 (2 seeds; 210/190)"
    none = next(ln for ln in lines if ln.startswith("| none |"))
    assert none.rstrip().endswith("| - |")  # no timed run of decoder-only


def test_sweep_names_timed_runs_apart_skips_dense_methods_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _load("fewshot")
    _prepared_dataset(tmp_path)
    calls: list[tuple[str, Path, float]] = []

    def fake_run(method, dataset, shots, seed, steps, out, eval_prompt, opts):  # noqa: ANN001, ANN202
        calls.append((method, out, opts.time_limit))
        return _row(method, seed, 0.5, time_limit=opts.time_limit) | {"total_seconds": 1.0}

    monkeypatch.setattr(sweep, "one_run", fake_run)
    results = tmp_path / "r.jsonl"
    argv = ["fewshot.py", "--datasets", "mni152-tissue", "--shots", "5", "--seeds", "0", "--methods", "salt"]
    argv += ["floor", "nnunet", "--data-root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]
    argv += ["--results", str(results), "--guard-mm", "10"]
    monkeypatch.setattr(sys, "argv", [*argv, "--time-limit", "60"])
    sweep.main()
    assert [(m, o.name, t) for m, o, t in calls] == [("salt", "salt_t60", 60.0)]
    sweep.main()  # resumed: the timed SALT row is in the results file
    assert len(calls) == 1
    monkeypatch.setattr(sys, "argv", argv)  # the converged sweep is another key: every method runs
    sweep.main()
    assert [(m, o.name, t) for m, o, t in calls[1:]] == [
        ("salt", "salt", 0.0),
        ("floor", "floor", 0.0),
        ("nnunet", "nnunet", 0.0),
    ]
    assert len(results.read_text().splitlines()) == 4


def test_coverage_lists_seeds_per_cell_and_estimates_the_missing_compute() -> None:
    report = _load("fewshot_report")
    rows = [_row("salt", s, 0.8) | {"total_seconds": 60.0 * (s + 1)} for s in (0, 1)]
    rows.append(
        _row("salt", 2, 0.8, time_limit=120) | {"total_seconds": 999.0}
    )  # timed: not a converged seed
    rows.append(_row("salt", 2, 0.8) | {"dataset": "colin27-aal", "total_seconds": 600.0})
    text = report.coverage(rows)
    salt = next(ln for ln in text.splitlines() if ln.startswith("| salt |"))
    cells = [c.strip() for c in salt.strip("|").split("|")]
    assert cells[1:3] == ["0,1", "-"] and cells[5] == "2"  # mni152 sparse 5; colin27 sparse 5
    # 24 runs in the grid, 3 done; mni152's 10 missing at its median 90 s, colin27's 11 at 600 s
    assert cells[-2:] == ["21", f"{(10 * 90 + 11 * 600) / 60:.0f}"]
    nnunet = next(ln for ln in text.splitlines() if ln.startswith("| nnunet |"))
    # never run, so no time to estimate it from; only seed 0 of each cell is required of nnU-Net
    assert nnunet.endswith("| 8 | ? |")
    assert (
        "Optional beyond that (nnunet: seed 0 required, the other seeds where time allows): 16 runs" in text
    )
    assert "not counting lora, ssam, svfit, effort, full, none, full_random, unet, nnunet, floor (" in text
    # superseded rows inform the run times only: colin27's runs at 300 s, no seed counted done
    old = [_row("lora", s, 0.5) | {"dataset": "colin27-aal", "total_seconds": 300.0} for s in (0, 1, 2)]
    text = report.coverage(rows, timing=old)
    lora_line = next(ln for ln in text.splitlines() if ln.startswith("| lora |"))
    lora = [c.strip() for c in lora_line.strip("|").split("|")]
    # colin27 sparse 5 still missing; all 24 runs at 300 s (mni152 falls back to the method's time anywhere)
    assert lora[5] == "-" and lora[-2:] == ["24", f"{24 * 300 / 60:.0f}"]


def test_parallel_sweep_writes_every_finished_run_once_and_skips_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _load("fewshot")
    _prepared_dataset(tmp_path)

    def fake_run(method, dataset, shots, seed, steps, out, eval_prompt, opts):  # noqa: ANN001, ANN202
        if method == "lora" and seed == 1:
            raise RuntimeError("salt-seg train ... failed")
        return _row(method, seed, 0.5) | {"total_seconds": 1.0}

    monkeypatch.setattr(sweep, "one_run", fake_run)
    results = tmp_path / "r.jsonl"
    argv = [
        "fewshot.py",
        "--datasets",
        "mni152-tissue",
        "--shots",
        "5",
        "--seeds",
        "0",
        "1",
        "2",
        "--methods",
    ]
    argv += ["salt", "lora", "--data-root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]
    monkeypatch.setattr(sys, "argv", [*argv, "--results", str(results), "--jobs", "3"])
    sweep.main()
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    done = sorted((r["method"], r["seed"]) for r in rows)
    assert done == [("lora", 0), ("lora", 2), ("salt", 0), ("salt", 1), ("salt", 2)]


def test_rows_carry_their_per_slice_scores_and_the_report_pairs_them_without_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, report = _load("fewshot"), _load("fewshot_report")
    _prepared_dataset(tmp_path)
    dice = {"salt": (0.9, 0.8), "none": (0.6, 0.7)}

    def fake_run(method, dataset, shots, seed, steps, out, eval_prompt, opts):  # noqa: ANN001, ANN202
        ev = sweep.evaluation_dir(out, eval_prompt)
        ev.mkdir(parents=True)
        a, b = dice[method]
        (ev / "per_slice.csv").write_text(
            "case,class_id,slice_index,status,dice\n"
            f"mni152,1,29,both_present,{a}\nmni152,1,30,both_present,{b}\nmni152,2,30,both_empty,\n"
            + ("mni152,2,31,gt_empty,0.0\n" if method == "salt" else "mni152,2,31,both_empty,\n")
        )
        return _row(method, seed, (a + b) / 2) | {"total_seconds": 1.0}

    monkeypatch.setattr(sweep, "one_run", fake_run)
    results, runs = tmp_path / "r.jsonl", tmp_path / "runs"
    argv = ["fewshot.py", "--datasets", "mni152-tissue", "--shots", "5", "--seeds", "0"]
    argv += ["--methods", "salt", "none", "--data-root", str(tmp_path / "data"), "--runs", str(runs)]
    monkeypatch.setattr(sys, "argv", [*argv, "--results", str(results)])
    sweep.main()
    rows = {r["method"]: r for r in map(json.loads, results.read_text().splitlines())}
    # every slice-class in the row itself, None where neither prediction nor truth holds the class (not scored)
    assert rows["salt"]["per_slice"] == [
        ["mni152", "1", "29", 0.9],
        ["mni152", "1", "30", 0.8],
        ["mni152", "2", "30", None],
        ["mni152", "2", "31", 0.0],  # a false positive on a slice without class 2
    ]
    assert rows["none"]["per_slice"][:3] == [
        ["mni152", "1", "29", 0.6],
        ["mni152", "1", "30", 0.7],
        ["mni152", "2", "30", None],
    ]
    assert rows["none"]["per_slice"][3] == ["mni152", "2", "31", None]

    shutil.rmtree(runs)  # a fresh machine: the results file alone
    argv = _report_argv(results, runs, tmp_path)
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    out = capsys.readouterr().out
    # SALT minus decoder-only per slice: +0.3 and +0.1, mean +0.2 over 2 pairs
    assert "- vs none: +0.200 [" in out and "(n=2 slice-class pairs)" in out
    # every slice-class, a rightly empty prediction scoring 1: +0.3, +0.1, 0 (both empty), -1 (SALT's false
    # positive against decoder-only's rightly empty slice): -0.15 over 4
    assert (
        "(1 pairs where one method predicts a structure the slice lacks): -0.150 [" in out and "(n=4)" in out
    )

    for r in rows.values():  # rows of an older sweep without scores, their folders gone: said, not skipped
        del r["per_slice"]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    report.main()
    assert (
        f"- vs none: no per-slice scores (neither in the rows nor in --runs {runs})"
        in capsys.readouterr().out
    )


def test_report_replace_puts_a_rerun_in_place_of_the_rows_of_the_same_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _load("fewshot_report")
    results, rerun = tmp_path / "r.jsonl", tmp_path / "rerun.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in [_row("salt", 0, 0.50), _row("salt", 1, 0.60)]))
    rerun.write_text(json.dumps(_row("salt", 0, 0.70)) + "\n\n" + json.dumps(_row("salt", 2, 0.80)) + "\n")
    argv = _report_argv(results, tmp_path, tmp_path)
    monkeypatch.setattr(sys, "argv", [*argv, "--replace", str(rerun)])
    report.main()
    salt = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| salt |"))
    cells = [c.strip() for c in salt.strip("|").split("|")]
    # seed 0 re-run (0.70) in place of 0.50, seed 1 kept, seed 2 added: mean of 0.7, 0.6, 0.8
    assert cells[1] == "3" and cells[2] == "0.700 ± 0.100"


def test_report_names_a_missing_results_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _load("fewshot_report")
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(_row("salt", 0, 0.5)) + "\n")
    argv = _report_argv(results, tmp_path, tmp_path)
    monkeypatch.setattr(sys, "argv", [*argv, "--replace", str(tmp_path / "rerun.jsonl")])
    with pytest.raises(SystemExit) as exit_info:
        report.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"{tmp_path / 'rerun.jsonl'}: no such results file")
    assert not (tmp_path / "p.png").exists()  # nothing written


@pytest.mark.parametrize(
    ("bad", "why"), [('{"method": "salt", "seed"', "Expecting ':' delimiter"), ("[1, 2]", "a list")]
)
def test_report_names_a_broken_results_line_in_one_line(
    bad: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A results file cut short (a run killed while writing) or edited by hand: the file and the line, exit 2."""
    report = _load("fewshot_report")
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(_row("salt", 0, 0.5)) + "\n\n" + bad + "\n")
    monkeypatch.setattr(sys, "argv", _report_argv(results, tmp_path, tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        report.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: {results}, line 3: not a JSON result row ({why})")
    assert not (tmp_path / "p.png").exists()


def test_sweep_refuses_to_append_to_a_broken_results_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep reads its results file to skip finished runs: a broken line stops it before any run, unchanged."""
    sweep = _load("fewshot")
    results = tmp_path / "r.jsonl"
    text = json.dumps(_row("salt", 0, 0.5)) + '\n{"method": "lora"\n'
    results.write_text(text)
    argv = [
        "fewshot.py",
        "--results",
        str(results),
        "--data-root",
        str(tmp_path / "d"),
        "--runs",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main()
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"{results}, line 2: not a JSON result row (Expecting ',' delimiter)")
    )
    assert results.read_text() == text and not (tmp_path / "d").exists()
