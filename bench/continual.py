"""The task-sequence benchmark of continual training (issue 17): three tasks in a row from the built-in base, each
a few-shot dataset with its own classes, for every method of keeping the earlier ones.

Methods (training through the public CLI, ``salt-seg train`` and ``salt-seg train --continue``):

- ``sequential``: full fine-tuning of task 1, then naive full fine-tuning on each next task.
- ``osft``: the same task-1 run, then each next task with ``train.continual: osft`` (Sculpting Subspaces).
- ``salt_sequential``: a SALT adapter on task 1, then the same adapter trained on each next task.
- ``separate``: a fresh SALT adapter per task from the base (the library's way; the upper bound on retention:
  nothing is forgotten by construction, the model switches adapter per task).
- ``separate_full``: a fresh full fine-tuning per task (the reference of the full fine-tuning methods' forward
  transfer).

After each step every task so far is scored on its split's test slices with the class-token prompts (hard Dice
per slice and class, over the (slice, class) pairs where the class is present), through the continued model's
own class ids (the adapter's ``extra.continual`` map). Reported per method: the accuracy matrix ``R[i][j]`` (Dice
on task ``j`` after learning task ``i``), average accuracy after the last task, backward transfer
``BWT = mean_j<T (R[T][j] - R[j][j])`` (negative = forgetting), forward transfer ``FWT = mean_j>1 (R[j][j] -
S[j])`` against the separate run of the same family ``S`` (full fine-tuning for sequential/osft, SALT for
salt_sequential): what learning after earlier tasks costs or gains on the new one, the parameters stored for
all tasks and the training time. Then the paired bootstrap interval of OSFT's forgetting minus naive sequential's
per (seed, earlier task, test slice, class).

Usage (one thread, resumable: finished runs are reused, results appended to --results):
    python bench/continual.py --seeds 0 1 --steps 80
    python bench/continual.py --report          # table + plot (docs/continual.png) from the results file
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fewshot_report import bootstrap_ci  # noqa: E402 - the few-shot report's paired bootstrap

METHODS = ("sequential", "osft", "salt_sequential", "separate", "separate_full")
#: (dataset folder name, split and preprocessing settings) per task, in order. The real volumes as
#: bench/fewshot.py splits them (sparse slice-level shots); the synthetic recipe's 12 small volumes are split by
#: volume (2 to train, 2 to validate, 4 to test) - too few slices per volume for a sparse slice split.
TASKS = (
    (
        "synthetic-shapes",
        ["data.holdout=volumes", "data.protocol=block", "data.shots=2", "data.val=2", "data.test=4"]
        + ["preprocessing.axis=2", "preprocessing.intensity=minmax"],
    ),
    (
        "mni152-tissue",
        ["data.holdout=slices", "data.protocol=sparse", "data.val=0.2", "data.test=0.4"]
        + ["preprocessing.axis=2", "preprocessing.intensity=mr"],
    ),
    (
        "colin27-aal",
        ["data.holdout=slices", "data.protocol=sparse", "data.val=0.15", "data.test=0.35"]
        + ["preprocessing.axis=1", "preprocessing.intensity=mr"],
    ),
)
FAMILY = {"sequential": "full", "osft": "full", "salt_sequential": "salt", "separate": "salt"}
REFERENCE = {"sequential": "separate_full", "osft": "separate_full", "salt_sequential": "separate"}
MAX_TEST_SLICES = 40  # evenly spaced test slices scored per task (CPU budget)


def sh(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")


def finished(run: Path) -> bool:
    return (run / "summary.json").is_file() and (run / "adapter.safetensors").is_file()


def task_sets(task: int, opts: argparse.Namespace, seed: int) -> list[str]:
    sets = [f"data.shots={opts.shots}", *TASKS[task][1]]  # the task's own shots (volumes) win
    return [
        f"data.path={Path(opts.data_root[task])}",
        *sets,
        f"data.guard_mm={opts.guard_mm}",
        f"train.seed={seed}",
        f"train.steps={opts.steps}",
        f"train.val_every={opts.val_every}",
        "train.early_stop=0",
    ]


def train_run(out: Path, sets: list[str], *, adapter: str | None, prior: Path | None, continual: str) -> None:
    if finished(out):
        return
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "salt_seg", "train", "--out", str(out), "--no-progress", "--threads", "1"]
    if prior is not None:
        cmd += ["--continue", str(prior)]
        sets = [*sets, f"train.continual={continual}"]
    else:
        sets = [
            *sets,
            f"model.checkpoint={OPTS.base}",
            f"model.image_size={OPTS.image_size}",
            "model.hires=false",
            f"preprocessing.image_size={OPTS.image_size}",
        ]
        cmd += ["--config", str(ROOT / "configs" / f"builtin_{adapter}.yaml")]
    for s in sets:
        cmd += ["--set", s]
    sh(cmd)


def chain(method: str, seed: int, opts: argparse.Namespace) -> list[Path]:
    """Train the method's runs for the task sequence; the run that answers task t after step t, per t."""
    base = Path(opts.runs) / f"seed{seed}"
    first = {"full": base / "full_t0", "salt": base / "salt_t0"}
    runs: list[Path] = []
    for t in range(len(TASKS)):
        sets = task_sets(t, opts, seed)
        if method in ("separate", "separate_full"):
            adapter = "salt" if method == "separate" else "full"
            out = first[adapter] if t == 0 else base / f"{method}_t{t}"
            train_run(out, sets, adapter=adapter, prior=None, continual="")
        else:
            family = FAMILY[method]
            if t == 0:
                out = first[family]
                train_run(out, sets, adapter=family, prior=None, continual="")
            else:
                out = base / f"{method}_t{t}"
                continual = "osft" if method == "osft" else "sequential"
                train_run(out, sets, adapter=None, prior=runs[-1], continual=continual)
        runs.append(out)
    return runs


_TEST_CACHE: dict[tuple[int, int], tuple[list, list, dict]] = {}


def test_slices(run: Path, task: int, seed: int):
    """The task's test slices (images, labels in the dataset's ids) as the run that learned it prepares them."""
    key = (seed, task)
    if key in _TEST_CACHE:
        return _TEST_CACHE[key]
    import dataclasses

    from salt_seg.adapters import read_adapter_metadata
    from salt_seg.configio import from_dict
    from salt_seg.data import SliceDataset, load_dataset, load_split
    from salt_seg.preprocessing import Preprocessing

    meta = read_adapter_metadata(run / "adapter.safetensors")
    record = from_dict(Preprocessing, meta["preprocessing"])
    ds = load_dataset(OPTS.data_root[task])
    record = dataclasses.replace(record, classes=dict(ds.classes))
    sd = SliceDataset.from_dataset(ds, record, split=load_split(run / "split.json"), part="test", cache=False)
    idx = np.unique(np.linspace(0, len(sd) - 1, min(MAX_TEST_SLICES, len(sd))).round().astype(int))
    images, labels = [], []
    for i in idx:
        item = sd[int(i)]
        images.append(item["image"])
        labels.append(item["label"])
    _TEST_CACHE[key] = (images, labels, dict(ds.classes))
    return _TEST_CACHE[key]


def score(model_run: Path, learned_run: Path, task: int, seed: int) -> dict[str, float]:
    """Hard Dice per (test slice, class) of ``model_run`` on ``task`` (class ids through its continual map)."""
    import torch
    import torch.nn.functional as F

    from salt_seg.inference.loading import load_inference_model
    from salt_seg.model.sam import InputPrompt

    images, labels, classes = test_slices(learned_run, task, seed)
    loaded = load_inference_model(model_run)
    tasks = loaded.meta["extra"].get("continual", {}).get("tasks")
    cmap = {int(k): int(v) for k, v in tasks[task]["class_map"].items()} if tasks else {c: c for c in classes}
    out: dict[str, float] = {}
    with torch.no_grad():
        for s, (img, lab) in enumerate(zip(images, labels, strict=True)):
            present = [c for c in classes if bool((lab == c).any())]
            if not present:
                continue
            prompts = [InputPrompt(class_id=cmap[c]) for c in present]
            logits, _ = loaded.model(img[None], prompts, [0] * len(prompts))
            up = F.interpolate(logits.float(), size=lab.shape[-2:], mode="bilinear", align_corners=False)
            for p, c in enumerate(present):
                pred, tgt = up[p, 0] > 0, lab == c
                inter = float((pred & tgt).sum())
                out[f"{s}:{c}"] = 2 * inter / float(pred.sum() + tgt.sum())
    return out


def params_stored(runs: list[Path], method: str) -> int:
    from salt_seg.adapters import read_adapter_metadata

    files = (
        runs if method in ("separate", "separate_full") else runs[-1:]
    )  # one continued model for all tasks
    return sum(read_adapter_metadata(r / "adapter.safetensors")["num_parameters"] for r in files)


def run_seed(seed: int, opts: argparse.Namespace, results: Path) -> None:
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["seed"], r["steps"], r["shots"]))
    import torch

    torch.set_num_threads(1)
    for method in opts.methods:
        if (method, seed, opts.steps, opts.shots) in done:
            continue
        print(f"seed {seed} {method} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            runs = chain(method, seed, opts)
        except RuntimeError as exc:
            print(f"FAILED\n{exc}", flush=True)
            continue
        per: dict[str, dict[str, float]] = {}  # "i,j" -> per-(slice, class) Dice
        for i, run in enumerate(runs):
            for j in range(i + 1):
                model_run = runs[j] if method in ("separate", "separate_full") else run
                per[f"{i},{j}"] = score(model_run, runs[j], j, seed)
        seconds = [json.loads((r / "summary.json").read_text())["seconds"] for r in runs]
        row = {
            "method": method,
            "seed": seed,
            "steps": opts.steps,
            "val_every": opts.val_every,
            "shots": opts.shots,
            "base": opts.base,
            "image_size": opts.image_size,
            "tasks": [t[0] for t in TASKS],
            "runs": [str(r) for r in runs],
            "R": {k: float(np.mean(list(v.values()))) if v else math.nan for k, v in per.items()},
            "per": per,
            "params_stored": params_stored(runs, method),
            "train_seconds": seconds,
            "wall_seconds": time.perf_counter() - t0,
        }
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        last = len(runs) - 1
        acc = np.mean([row["R"][f"{last},{j}"] for j in range(len(runs))])
        print(f"ACC {acc:.3f} ({row['wall_seconds']:.0f} s)", flush=True)


# -- report ---------------------------------------------------------------------------------------------------------


def metrics(row: dict, ref: dict | None) -> dict[str, float]:
    T = len(row["tasks"])
    R = row["R"]
    acc = float(np.mean([R[f"{T - 1},{j}"] for j in range(T)]))
    bwt = float(np.mean([R[f"{T - 1},{j}"] - R[f"{j},{j}"] for j in range(T - 1)]))
    fwt = math.nan
    if ref is not None:
        fwt = float(np.mean([R[f"{j},{j}"] - ref["R"][f"{j},{j}"] for j in range(1, T)]))
    return {"acc": acc, "bwt": bwt, "fwt": fwt}


def forgetting_units(row: dict) -> dict[str, float]:
    """Per (seed, earlier task, slice, class): Dice right after learning the task minus after the last task."""
    T = len(row["tasks"])
    out = {}
    for j in range(T - 1):
        after, now = row["per"][f"{j},{j}"], row["per"][f"{T - 1},{j}"]
        for k in after.keys() & now.keys():
            out[f"{row['seed']}:{j}:{k}"] = after[k] - now[k]
    return out


def fmt(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{np.mean(vals):.3f} ± {sd:.3f}"


def report(results: Path, plot: Path) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by = {(r["method"], r["seed"]): r for r in rows}
    methods = [m for m in METHODS if any(k[0] == m for k in by)]
    seeds = sorted({r["seed"] for r in rows})
    tasks = rows[0]["tasks"]
    T = len(tasks)
    print(
        f"tasks: {' -> '.join(tasks)}; seeds {seeds}; {rows[0]['steps']} steps per task, {rows[0]['shots']} shots"
    )
    print()
    header = [
        "method",
        *[f"after t{i + 1}: " + " / ".join(f"T{j + 1}" for j in range(i + 1)) for i in range(T)],
    ]
    header += ["ACC", "BWT", "FWT", "params stored", "train s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for m in methods:
        rs = [by[(m, s)] for s in seeds if (m, s) in by]
        cells = [m]
        for i in range(T):
            cells.append(" / ".join(f"{np.mean([r['R'][f'{i},{j}'] for r in rs]):.3f}" for j in range(i + 1)))
        ms = [metrics(r, by.get((REFERENCE.get(m, ""), r["seed"]))) for r in rs]
        cells += [fmt([x["acc"] for x in ms]), fmt([x["bwt"] for x in ms]), fmt([x["fwt"] for x in ms])]
        cells += [
            f"{np.mean([r['params_stored'] for r in rs]):,.0f}",
            f"{np.mean([sum(r['train_seconds']) for r in rs]):.0f}",
        ]
        print("| " + " | ".join(cells) + " |")
    pairs = [
        (by[("osft", s)], by[("sequential", s)])
        for s in seeds
        if ("osft", s) in by and ("sequential", s) in by
    ]
    if pairs:
        diffs = []
        for o, q in pairs:
            fo, fq = forgetting_units(o), forgetting_units(q)
            diffs += [fo[k] - fq[k] for k in sorted(fo.keys() & fq.keys())]
        mean, lo, hi = bootstrap_ci(np.array(diffs))
        print(
            f"\nforgetting (Dice after learning a task minus after the last task), OSFT minus naive sequential, "
            f"paired over {len(diffs)} (seed, earlier task, test slice, class): {mean:+.3f} [95% CI {lo:+.3f}, {hi:+.3f}]"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, T, figsize=(4 * T, 3.4), sharey=True)
    for j in range(T):
        ax = axes[j]
        for m in methods:
            rs = [by[(m, s)] for s in seeds if (m, s) in by]
            xs = list(range(j, T))
            ys = [np.mean([r["R"][f"{i},{j}"] for r in rs]) for i in xs]
            ax.plot([x + 1 for x in xs], ys, marker="o", label=m)
        ax.set_title(f"task {j + 1}: {tasks[j]}", fontsize=9)
        ax.set_xlabel("after learning task")
        ax.set_xticks(range(1, T + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice (class-token prompts)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=120)
    print(f"\nplot: {plot}")


OPTS: argparse.Namespace


def main() -> None:
    global OPTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=100, help="training steps per task (default 100)")
    ap.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="validation interval (default: --steps, a fixed budget: the run's adapter is its last step unless "
        "the untrained start validates better). Validation counts a class absent from both prediction and truth "
        "as Dice 1, so on a many-class task (colin27-aal) an early all-empty model can win best-checkpoint "
        "selection and stand for the run",
    )
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--guard-mm", type=float, default=5.0)
    ap.add_argument("--base", default="builtin128")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument(
        "--data-root",
        nargs=len(TASKS),
        default=[str(ROOT / "data" / t[0]) for t in TASKS],
        help="the three prepared datasets, in task order (salt-seg data prepare NAME --out ...)",
    )
    ap.add_argument("--runs", default=str(ROOT / "runs" / "continual"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "continual.jsonl"))
    ap.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "continual.png"))
    OPTS = ap.parse_args()
    OPTS.val_every = OPTS.val_every or OPTS.steps
    results = Path(OPTS.results)
    if OPTS.report:
        report(results, Path(OPTS.plot))
        return
    results.parent.mkdir(parents=True, exist_ok=True)
    for seed in OPTS.seeds:
        run_seed(seed, OPTS, results)


if __name__ == "__main__":
    main()
