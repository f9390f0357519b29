"""The few-shot benchmark: every adapter from the built-in base (plus full fine-tuning from a random base and a
MONAI U-Net from scratch) on the prepared real datasets, at several shot counts and seeds.

Each run goes through the public CLI - ``salt-seg train`` then ``salt-seg evaluate --model RUN`` (which predicts
the split's test slices and scores them) - with a fixed step budget. The sweep resumes where it stopped: a run
already in the results file is skipped; a half-finished run directory is removed and redone. One JSON line per
run is appended to the results file.

``nnunet`` is nnU-Net v2 through its own CLI (``bench/nnunet_baseline.py``: 2-D configuration, the split's training
slices written as 2-D cases, ``--nnunet-trainer``, default the 5-epoch trainer that converges on a CPU; without
mirroring where the classes pair left and right), on the same
split as every other method of the cell; its nnU-Net folders stay in the run directory, and a finished one (its
``result.json``) is scored again instead of retrained.

``--time-limit T`` gives every method the same wall-clock budget instead (the equal-wall-clock column of the
report): ``train.time_limit=T`` (validation included; the cosine schedule follows the clock), no early stopping,
the best validated checkpoint kept, ``--steps`` only a cap. Those runs live in ``METHOD_tT`` beside the
converged ones. The floors and nnU-Net have no such budget and are skipped.

A second sweep with another ``--eval-prompt`` (e.g. ``box``: the clinician draws a box per structure) reuses the
finished training runs and only evaluates them again, into ``RUN/evaluation_box``; ``auto`` (learned class tokens,
no user input) writes ``RUN/evaluation``.

Usage:
    python bench/fewshot.py --datasets mni152-tissue colin27-aal --shots 5 20 --seeds 0 1 2 --steps 150
    python bench/fewshot.py --datasets mni152-tissue colin27-aal --shots 5 20 --seeds 0 1 2 --steps 150 --eval-prompt box
    python bench/fewshot_report.py      # tables, bootstrap intervals and the plot
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = (
    "salt",
    "lora",
    "ssam",
    "svfit",
    "effort",
    "full",
    "none",
    "full_random",
    "unet",
    "nnunet",
    "floor",
)
#: the paper's setting (issue 12, item 6): the mask decoder frozen, so that only the encoder adapter, the class
#: tokens and the full-resolution branch train; ``none_fd`` (tokens and branch only) isolates the encoder adapters
#: methods without a prompt or a SAM training budget: scored on their dense output, no time-limited variant
DENSE = ("unet", "nnunet", "floor")
FROZEN_DECODER = ("salt_fd", "lora_fd", "ssam_fd", "none_fd")
#: ``full`` trained with another optimizer (issue 18): the ``train`` settings of each variant; plain ``full`` is
#: AdamW. ``full_qgalore_t25`` starts every matrix's refresh interval at 25 steps and lengthens it after 2 stable
#: refreshes, so that Q-GaLore's lazy rule acts within a few-shot run's few hundred steps
FULL_OPTIMIZERS = {
    "full_galore": ["train.optimizer=galore"],
    "full_qgalore": ["train.optimizer=q-galore"],
    "full_qgalore_t25": [
        "train.optimizer=q-galore",
        "train.galore_update_interval=25",
        "train.qgalore_patience=2",
    ],
}

#: slice axis and split fractions per dataset (the guard stays 10 mm everywhere). colin27-aal is one volume whose
#: 12 deep structures sit at different heights: along the axial axis a contiguous test block holds only
#: hippocampus and amygdala (amygdala in no training slice) and 20 shots do not fit beside a 10 mm guard; the
#: coronal axis puts every structure in the middle third, so training covers the test classes.
SPLITS = {
    "mni152-tissue": {"axis": 2, "val": 0.2, "test": 0.4},
    "colin27-aal": {"axis": 1, "val": 0.15, "test": 0.35},
}
DEFAULT_SPLIT = {"axis": 2, "val": 0.2, "test": 0.4}
#: the base every SAM method starts from, and its input size (``--base``/``--image-size``); the issue-9 sweep ran
#: the 128 px ``builtin128`` (a quarter of the 256 px default's tokens) without the full-resolution branch
BASE, IMAGE_SIZE = "builtin", 256


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")


def evaluation_dir(run_dir: Path, eval_prompt: str) -> Path:
    """Where a run's evaluation with this prompt mode lives (``auto``: the CLI's default ``evaluation``)."""
    return run_dir / ("evaluation" if eval_prompt in ("auto", "dense") else f"evaluation_{eval_prompt}")


def slice_scores(eval_dir: Path) -> list[list]:
    """Every (case, class id, slice index, Dice) row of an evaluation's ``per_slice.csv``, Dice ``None`` where
    neither the prediction nor the truth holds the class: what the report pairs between methods. Kept in the
    result row so that a results file alone reproduces the paired intervals."""
    f = eval_dir / "per_slice.csv"
    if not f.is_file():
        return []
    with f.open() as fh:
        return [
            [
                r["case"],
                r["class_id"],
                r["slice_index"],
                None if r["dice"] in ("", "nan") else round(float(r["dice"]), 6),
            ]
            for r in csv.DictReader(fh)
        ]


def read_rows(path: Path | str) -> list[dict]:
    """The rows of a results file (one JSON object per line; blank lines skipped). A line that is not one - a
    file cut short by a killed run, or edited by hand - raises ``ValueError`` naming the file and the line."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {n}: not a JSON result row ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: not a JSON result row (a {type(row).__name__})")
        rows.append(row)
    return rows


def trained(out: Path, steps: int, time_limit: float = 0.0) -> bool:
    """A finished training run of this step budget (its summary is written last); under a time limit the run
    ends on the clock, so any finished run counts."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return (time_limit > 0 or summary.get("steps") == steps) and (out / "adapter.safetensors").is_file()


def one_run(
    method: str,
    dataset: Path,
    shots: int,
    seed: int,
    steps: int,
    out: Path,
    eval_prompt: str,
    opts: argparse.Namespace,
) -> dict:
    split = split_settings(dataset.name, opts)
    if method == "floor":
        return floor_row(dataset, shots, seed, steps, out, split, opts)
    if method == "nnunet":
        return nnunet_row(dataset, shots, seed, steps, out, split, opts)
    reuse = method != "unet" and trained(out, steps, opts.time_limit)
    if out.exists() and not reuse:
        shutil.rmtree(out)
    t0 = time.perf_counter()
    if method == "unet":
        run(
            [
                sys.executable,
                str(ROOT / "bench" / "unet_baseline.py"),
                "--data",
                str(dataset),
                "--shots",
                str(shots),
                "--seed",
                str(seed),
                "--steps",
                str(max(steps, 5000)),  # a cap: the U-Net stops on its validation patience (converged)
                "--max-minutes",
                "15",
                "--image-size",
                str(opts.image_size),
                "--protocol",
                opts.protocol,
                "--guard-mm",
                str(opts.guard_mm),
                "--axis",
                str(split["axis"]),
                "--val",
                str(split["val"]),
                "--test",
                str(split["test"]),
                "--out",
                str(out),
            ]
        )
    else:
        adapter = {"full_random": "full"}.get(method, method.removesuffix("_fd"))
        if method in FULL_OPTIMIZERS:
            adapter = "full"
        config = ROOT / "configs" / f"builtin_{adapter}.yaml"
        sets = [
            f"data.path={dataset}",
            f"data.shots={shots}",
            f"train.seed={seed}",
            f"train.steps={steps}",
            f"train.val_every={opts.val_every}",
            f"train.early_stop={opts.patience}",
            f"model.checkpoint={opts.base}",
            f"model.image_size={opts.image_size}",
            f"model.hires={'true' if opts.hires else 'false'}",
            f"preprocessing.image_size={opts.image_size}",
            f"preprocessing.axis={split['axis']}",
            f"data.val={split['val']}",
            f"data.test={split['test']}",
            f"data.protocol={opts.protocol}",
            f"data.guard_mm={opts.guard_mm}",
        ]
        if method == "full_random":
            sets.append("model.checkpoint=null")
        if method in FROZEN_DECODER:
            sets.append("adapter.train_mask_decoder=false")
        if method in FULL_OPTIMIZERS:
            sets += FULL_OPTIMIZERS[method]
        if opts.time_limit > 0:  # equal wall-clock: the clock ends the run, not the validation patience
            sets += [f"train.time_limit={opts.time_limit}", "train.early_stop=0"]
        train_cmd = [
            sys.executable,
            "-m",
            "salt_seg",
            "train",
            "--config",
            str(config),
            "--out",
            str(out),
            "--no-progress",
            "--threads",
            "1",
            "--device",
            opts.device,
        ]
        for s in sets:
            train_cmd += ["--set", s]
        if not reuse:  # else only evaluate the finished run again, with this prompt mode
            run(train_cmd)
        run(
            [
                sys.executable,
                "-m",
                "salt_seg",
                "evaluate",
                "--model",
                str(out),
                "--prompt",
                eval_prompt,
                "--overlap",
                opts.overlap,
                "--device",
                opts.device,
                "--out",
                str(evaluation_dir(out, eval_prompt)),
            ]
        )
    seconds = time.perf_counter() - t0
    ev = json.loads((evaluation_dir(out, eval_prompt) / "evaluation.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    prompt = "dense" if method == "unet" else eval_prompt
    return row_head(method, dataset, shots, seed, steps, split, opts, prompt, opts.time_limit) | {
        "hires": opts.hires,
        "overlap": opts.overlap,
        "steps_done": summary.get("steps"),
        "best_step": summary.get("best_step"),
        "trainable_parameters": summary.get("trainable_parameters"),
        "train_seconds": summary.get("seconds"),
        "total_seconds": seconds,
        "reused_training": reuse,
        "svd_refreshes": summary.get("svd_refreshes"),
        "svd_refreshes_fixed_schedule": summary.get("svd_refreshes_fixed_schedule"),
        "summary": ev["summary"],
        "per_case": ev.get("per_case"),
        "class_names": ev.get("class_names"),
    }


def floor_row(
    dataset: Path, shots: int, seed: int, steps: int, out: Path, split: dict, opts: argparse.Namespace
) -> dict:
    """The intensity floor (nearest class mean) fitted on exactly the training slices of the SAM runs' split."""
    from salt_seg.evaluation.floors import intensity_floor

    t0 = time.perf_counter()
    ds, sp = cell_split(dataset, shots, seed, split, out)
    res = intensity_floor(ds, sp, "nearest_mean")
    return row_head("floor", dataset, shots, seed, steps, split, opts) | {
        "total_seconds": time.perf_counter() - t0,
        "summary": pooled_summary(res.per_class),
    }


def split_settings(dataset_name: str, opts: argparse.Namespace) -> dict:
    """The split every method of a cell draws: the dataset's axis and fractions, the sweep's protocol and guard."""
    return SPLITS.get(dataset_name, DEFAULT_SPLIT) | {"protocol": opts.protocol, "guard_mm": opts.guard_mm}


def row_key(row: dict) -> tuple:
    """What makes a result row the same run (the sweep's resume key); rows of older sweeps lack the newer keys."""
    return (
        row["method"],
        row["dataset"],
        row["shots"],
        row["seed"],
        row["steps"],
        row["eval_prompt"],
        row["split"].get("protocol", "block"),
        row.get("base", "builtin128"),
        row["split"].get("guard_mm"),
        row.get("time_limit", 0.0),
    )


def row_head(  # noqa: PLR0913 - the keys that identify a result row
    method: str,
    dataset: Path,
    shots: int,
    seed: int,
    steps: int,
    split: dict,
    opts: argparse.Namespace,
    eval_prompt: str = "dense",
    time_limit: float = 0.0,
) -> dict:
    """The keys every result row starts with (what :func:`row_key` reads); ``dense``: a method
    without prompts (U-Net, nnU-Net, the floor). ``lateral_flip``: what the training flip of the SAM methods and
    the U-Net did to left/right class pairs (``swap``; rows without it kept the labels, see
    :mod:`salt_seg.data.laterality`)."""
    return {
        "method": method,
        "dataset": dataset.name,
        "shots": shots,
        "seed": seed,
        "steps": steps,
        "eval_prompt": eval_prompt,
        "split": split,
        "base": opts.base,
        "time_limit": time_limit,
    } | ({} if method in ("nnunet", "floor") else {"lateral_flip": "swap"})


def cell_split(dataset: Path, shots: int, seed: int, split: dict, out: Path) -> tuple:
    """The cell's split (the one every SAM run of this dataset, shots and seed draws), saved as ``out/split.json``."""
    from salt_seg.data import load_dataset, make_split, save_split

    ds = load_dataset(dataset)
    sp = make_split(
        ds,
        level="slice",
        shots=shots,
        val=split["val"],
        test=split["test"],
        seed=seed,
        axis=split["axis"],
        guard_mm=split["guard_mm"],
        protocol=split["protocol"],
    )
    out.mkdir(parents=True, exist_ok=True)
    save_split(sp, out / "split.json")
    return ds, sp


def pooled_summary(per_class: dict) -> dict:
    """``{"slice": {class: {"dice": ...}, "all": ...}}`` with "all" pooled over slices as ``evaluate`` pools them."""
    per = {str(c): {"dice": v} for c, v in per_class.items()}
    pooled = [(v["mean"], v["n"]) for v in per_class.values() if v.get("n")]
    return {
        "slice": per | {"all": {"dice": {"mean": sum(m * n for m, n in pooled) / sum(n for _, n in pooled)}}}
    }


def nnunet_row(
    dataset: Path, shots: int, seed: int, steps: int, out: Path, split: dict, opts: argparse.Namespace
) -> dict:
    """nnU-Net v2 (``bench/nnunet_baseline.py``) on the cell's split; its per-slice Dice is written as
    ``out/evaluation/per_slice.csv`` so that the report pairs it with the other methods' slices."""
    from salt_seg.io import atomic_path

    t0 = time.perf_counter()
    result_path = out / "result.json"
    if not result_path.is_file():  # else a finished nnU-Net run of this cell: only scored again
        if out.exists():
            shutil.rmtree(out)
        cell_split(dataset, shots, seed, split, out)
        run(
            [
                sys.executable,
                str(ROOT / "bench" / "nnunet_baseline.py"),
                "--data",
                str(dataset),
                "--split",
                str(out / "split.json"),
                "--work",
                str(out),
                "--trainer",
                opts.nnunet_trainer,
                "--threads",
                str(opts.nnunet_threads),
                "--device",
                opts.device.split(":")[0],
            ]
        )
    result = json.loads(result_path.read_text())
    (out / "evaluation").mkdir(exist_ok=True)
    with (
        atomic_path(out / "evaluation" / "per_slice.csv", suffix=".csv") as tmp,
        open(tmp, "w", newline="") as f,
    ):
        w = csv.writer(f)
        w.writerow(["case", "class_id", "slice_index", "status", "dice"])
        for s in result["per_slice"]:
            w.writerow(
                [s["case"], s["class"], s["slice"], s["status"], "" if s["dice"] is None else s["dice"]]
            )
    return row_head("nnunet", dataset, shots, seed, steps, split, opts) | {
        "trainer": result.get("trainer"),
        "mirroring": result.get("mirroring", True),
        "steps_done": result.get("steps"),
        "train_seconds": result["seconds"].get("train"),
        "total_seconds": result["seconds"].get("total", time.perf_counter() - t0),
        "summary": pooled_summary({c: v["dice"] for c, v in result["per_class"].items()}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mni152-tissue", "colin27-aal"])
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS + FROZEN_DECODER + tuple(FULL_OPTIMIZERS),
    )
    ap.add_argument("--steps", type=int, default=600, help="step cap (default 600)")
    ap.add_argument(
        "--patience", type=int, default=3, help="validations without improvement before stopping (default 3)"
    )
    ap.add_argument("--val-every", type=int, default=50, help="validate every N steps (default 50)")
    ap.add_argument("--protocol", default="sparse", choices=("block", "sparse"))
    ap.add_argument("--guard-mm", type=float, default=10.0)
    ap.add_argument("--base", default=BASE, help=f"base checkpoint of every SAM method (default {BASE})")
    ap.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    ap.add_argument("--no-hires", dest="hires", action="store_false", help="SAM's own 1/4-resolution output")
    ap.add_argument("--overlap", default="label_map", choices=("label_map", "independent"))
    ap.add_argument("--eval-prompt", default="auto", choices=("auto", "box", "point"))
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "fewshot"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "fewshot_v2.jsonl"))
    ap.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="equal wall-clock budget in seconds for every SAM method (0 = train to convergence)",
    )
    ap.add_argument("--nnunet-trainer", default="nnUNetTrainer_5epochs", help="nnU-Net trainer class (-tr)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each its own processes (default 1; e.g. one per core)",
    )
    ap.add_argument(
        "--stop-after",
        type=float,
        default=0.0,
        help="start no run after this many seconds (runs under way finish; 0 = no limit)",
    )
    ap.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N for training, evaluation and nnU-Net"
    )
    ap.add_argument("--nnunet-threads", type=int, default=1, help="torch threads of the nnU-Net processes")
    args = ap.parse_args()

    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = {row_key(r) for r in read_rows(results)} if results.exists() else set()
    except ValueError as exc:
        ap.error(str(exc))
    tasks = []
    for name in args.datasets:
        dataset = Path(args.data_root) / name
        if not (dataset / "dataset.json").is_file():
            run([sys.executable, "-m", "salt_seg", "data", "prepare", name, "--out", str(dataset)])
        for shots in args.shots:
            for seed in args.seeds:
                for method in args.methods:
                    if args.time_limit > 0 and method in DENSE:
                        continue
                    prompt = "dense" if method in DENSE else args.eval_prompt
                    head = row_head(
                        method,
                        dataset,
                        shots,
                        seed,
                        args.steps,
                        split_settings(name, args),
                        args,
                        prompt,
                        args.time_limit,
                    )
                    if row_key(head) in done:
                        continue
                    run_name = f"{method}_t{args.time_limit:g}" if args.time_limit > 0 else method
                    out = Path(args.runs) / name / args.protocol / f"shots{shots}" / f"seed{seed}" / run_name
                    tasks.append((method, dataset, shots, seed, out))

    def one(task: tuple) -> dict | None:
        method, dataset, shots, seed, out = task
        label = f"{dataset.name} shots={shots} seed={seed} {method}"
        if args.stop_after and time.perf_counter() - started > args.stop_after:
            print(f"{label}: not started, --stop-after {args.stop_after:g} s has passed", flush=True)
            return None
        if args.jobs == 1:
            print(f"{label} ...", end=" ", flush=True)
        try:
            row = one_run(method, dataset, shots, seed, args.steps, out, args.eval_prompt, args)
        except RuntimeError as exc:
            print(f"{label} FAILED\n{exc}" if args.jobs > 1 else f"FAILED\n{exc}", flush=True)
            return None
        if method != "floor":  # the scores the report pairs, kept with the row (run folders are scratch)
            row["per_slice"] = slice_scores(
                evaluation_dir(out, "dense" if method in DENSE else args.eval_prompt)
            )
        with lock, open(results, "a") as f:  # one line per finished run, whichever worker finished it
            f.write(json.dumps(row) + "\n")
        d = row["summary"]["slice"]["all"]["dice"]["mean"]
        print(
            f"{label + ' ... ' if args.jobs > 1 else ''}Dice {d:.3f} ({row['total_seconds']:.0f} s)",
            flush=True,
        )
        return row

    lock, started = threading.Lock(), time.perf_counter()
    if args.jobs == 1:
        for task in tasks:
            one(task)
    else:  # each run is its own processes (train, evaluate, nnU-Net): threads only dispatch and collect
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, tasks))


if __name__ == "__main__":
    main()
