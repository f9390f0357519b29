"""Tables, paired bootstrap intervals and a plot from ``bench/results/fewshot.jsonl`` (see ``bench/fewshot.py``).

For each dataset and shot count: Dice and HD95 (mm) per method as mean ± std over seeds (each seed's value is the
mean over its test slices), trainable parameters and training time; and for SALT minus each other method, a 95%
bootstrap interval of the mean per-slice Dice difference, pairing the same (seed, test slice, class) - every
method sees the same split at a given seed. Pairs are the slice-classes both methods score. Where one method
predicts a structure on a slice without it (scored 0) and the other rightly predicts nothing (not scored), a
second interval over every test slice-class counts those too, a rightly empty prediction scoring 1 (as
``evaluate``'s ``both_empty="perfect"`` policy scores it), so that false positives weigh in the
comparison as they do in the pooled means. Runs of ``bench/fewshot.py --time-limit T`` (every method given the same
wall-clock budget) are not rows of their own: they fill an "equal wall-clock" column per budget beside the
converged figures.

Usage: python bench/fewshot_report.py [--results FILE] [--runs DIR] [--plot FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fewshot import DENSE, evaluation_dir, read_rows, row_key, slice_scores  # noqa: E402 - the sweep's row key and scores

ORDER = ("salt", "lora", "ssam", "svfit", "effort", "full", "none", "full_random", "unet", "nnunet", "floor")
#: the frozen-decoder sweep (the paper's setting): compared with each other, ``salt_fd`` as the reference
FROZEN = ("salt_fd", "lora_fd", "ssam_fd", "none_fd")
#: full fine-tuning with a low-memory optimizer (issue 18): compared with ``full`` (AdamW)
LOWMEM = ("full_galore", "full_qgalore", "full_qgalore_t25")
ORDER = ORDER[:6] + LOWMEM + ORDER[6:7] + FROZEN + ORDER[7:]
REFERENCES = (
    ("salt", "SALT", lambda m: m not in FROZEN and m not in LOWMEM),
    ("salt_fd", "SALT with the decoder frozen", lambda m: m in FROZEN),
    ("full", "Full fine-tuning with AdamW", lambda m: m in LOWMEM),
)


#: issue 12's acceptance grid: every cell of (dataset, protocol, shots) x these methods at three seeds
GRID_METHODS = tuple(m for m in ORDER if m not in FROZEN + LOWMEM)
GRID_CELLS = tuple(
    (d, p, n) for d in ("mni152-tissue", "colin27-aal") for p in ("sparse", "block") for n in (5, 20)
)
GRID_SEEDS = (0, 1, 2)
#: seeds the acceptance requires of a method when not all of :data:`GRID_SEEDS`: nnU-Net needs "at least seed 0 of
#: every cell, all seeds where time allows", so its other seeds are counted apart, as optional
REQUIRED_SEEDS = {"nnunet": (0,)}
#: methods drawn as baselines in the plot (squares, dashed)
BASELINES = ("unet", "nnunet", "floor")


def coverage(rows: list[dict], timing: Iterable[dict] = ()) -> str:
    """Which seeds of the acceptance grid have a converged class-token (or dense) row, and an estimate of the
    compute the missing runs need: each at the median total seconds of the same method on the same dataset
    (else of the method anywhere). ``timing``: rows that only inform those run times (e.g. superseded rows of
    the same runs), never the seeds done. Runs outside a method's :data:`REQUIRED_SEEDS` are counted apart, as
    optional. Markdown."""
    have: dict[tuple, set[int]] = defaultdict(set)
    secs: dict[tuple, list[float]] = defaultdict(list)
    for r in [*rows, *({**t, "_timing_only": True} for t in timing)]:
        if r.get("time_limit") or r["eval_prompt"] not in ("auto", "dense"):
            continue
        protocol = r.get("split", {}).get("protocol", "block")
        if not r.get("_timing_only"):
            have[(r["method"], r["dataset"], protocol, r["shots"])].add(r["seed"])
        if r.get("total_seconds") and not r.get("reused_training"):
            secs[(r["method"], r["dataset"])].append(r["total_seconds"])
            secs[(r["method"], None)].append(r["total_seconds"])
    head = (
        "| method | "
        + " | ".join(f"{d} {p} {n}" for d, p, n in GRID_CELLS)
        + " | missing runs | est. CPU min |"
    )
    lines = [head, "|---" * (len(GRID_CELLS) + 3) + "|"]
    total_missing, total_est, unknown = 0, 0.0, []
    optional, optional_est = 0, 0.0
    for m in GRID_METHODS:
        cells, missing, est = [], 0, 0.0
        required = set(REQUIRED_SEEDS.get(m, GRID_SEEDS))
        for d, p, n in GRID_CELLS:
            seeds = have.get((m, d, p, n), set()) & set(GRID_SEEDS)
            cells.append(",".join(map(str, sorted(seeds))) or "-")
            ref = secs.get((m, d)) or secs.get((m, None))
            cost = statistics.median(ref) if ref else 0.0
            lacking = len(required - seeds)
            missing += lacking
            est += lacking * cost
            extra = len(set(GRID_SEEDS) - required - seeds)
            optional, optional_est = optional + extra, optional_est + extra * cost
        if missing and not secs.get((m, None)):
            unknown.append(m)
        total_missing, total_est = total_missing + missing, total_est + est
        shown = "?" if m in unknown else f"{est / 60:.0f}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {missing} | {shown} |")
    lines.append(
        f"\nSeeds done per cell; {total_missing} runs missing, about {total_est / 60:.0f} CPU-minutes at the measured "
        "one-thread run times"
        + (f", not counting {', '.join(unknown)} (never run in these results: '?')." if unknown else ".")
    )
    if optional:
        lines.append(
            f"Optional beyond that ({', '.join(f'{m}: seed {min(s)} required' for m, s in REQUIRED_SEEDS.items())}"
            f", the other seeds where time allows): {optional} runs, about {optional_est / 60:.0f} CPU-minutes."
        )
    return "\n".join(lines)


PROMPTS = {"auto": "class tokens, no user input", "box": "one box per structure from the ground truth"}


def per_slice(row: dict, run: Path, prompt: str) -> dict[tuple, float | None]:
    """(case, class id, slice index) -> Dice of one result row, ``None`` where neither the prediction nor the
    truth holds the class (not scored): the scores the row carries (``bench/fewshot.py`` keeps them since the
    twelfth session), else its run folder's ``per_slice.csv`` (empty when that is gone)."""
    entries = row.get("per_slice") or slice_scores(
        evaluation_dir(run, "dense" if run.name in DENSE else prompt)
    )
    return {(str(c), str(k), str(i)): None if d is None else float(d) for c, k, i, d in entries}


def _or1(dice: float | None) -> float:
    """A slice-class's Dice with an empty prediction of an empty truth (or an older row without it) scoring 1."""
    return 1.0 if dice is None else dice


def bootstrap_ci(diffs: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(diffs, size=(n, len(diffs)), replace=True).mean(1)
    return float(diffs.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt(values: list[float], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "fewshot.jsonl"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "fewshot"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "fewshot.png"))
    ap.add_argument("--base", default=None, help="only the rows of this base (e.g. builtin_v1, builtin)")
    ap.add_argument(
        "--coverage",
        action="store_true",
        help="only the grid of seeds done per cell and the compute still missing",
    )
    ap.add_argument(
        "--timing",
        nargs="*",
        default=[],
        help="with --coverage: results files whose run times inform the estimate only (e.g. superseded rows)",
    )
    ap.add_argument(
        "--replace",
        nargs="*",
        default=[],
        help="results files whose rows take the place of --results' rows of the same run (e.g. a re-run of some "
        "seeds on another machine, with per-slice scores); rows new to --results are added",
    )
    args = ap.parse_args()
    for f in [args.results, *args.replace, *args.timing]:
        if not Path(f).is_file():
            ap.error(f"{f}: no such results file")
    try:
        rows = read_rows(args.results)
        replacing = [r for f in args.replace for r in read_rows(f)]
        timing = [r for f in args.timing for r in read_rows(f)]
    except ValueError as exc:
        ap.error(str(exc))
    if replacing:
        new = {row_key(r): r for r in replacing}
        rows = [new.pop(row_key(r), r) for r in rows] + list(new.values())
    if args.base:  # one base per report (the runs folder is per sweep)
        rows = [r for r in rows if r["method"] == "floor" or r.get("base", "builtin128") == args.base]
    if args.coverage:
        if args.base:
            timing = [r for r in timing if r.get("base", "builtin128") == args.base]
        print(coverage(rows, timing))
        return
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    #: equal wall-clock runs: (dataset, protocol, prompt, shots) -> budget -> method -> rows
    timed: dict[tuple, dict[float, dict[str, list[dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    prompts = sorted({r["eval_prompt"] for r in rows} - {"dense"}) or ["auto"]
    for r in rows:  # the U-Net (dense output, no prompt) is the same baseline beside every prompt mode
        for p in prompts if r["eval_prompt"] == "dense" else [r["eval_prompt"]]:
            protocol = r.get("split", {}).get("protocol", "block")
            cell = (r["dataset"], protocol, p, r["shots"])
            if r.get("time_limit"):
                timed[cell][r["time_limit"]][r["method"]].append(r)
            else:
                groups[cell][r["method"]].append(r)
    total = sum(r.get("total_seconds") or 0 for r in rows)
    reeval = sum(bool(r.get("reused_training")) for r in rows)
    print(
        f"{len(rows)} result rows ({reeval} of them re-evaluations of a finished training run with another prompt "
        f"mode), total compute {total / 60:.0f} min (2-core CPU, one torch thread per run)\n"
    )
    plot_data = defaultdict(dict)
    for (dataset, protocol, prompt, shots), methods in sorted(groups.items()):
        print(
            f"### {dataset}, {protocol} split, {shots} shots, prompt {prompt} ({PROMPTS.get(prompt, prompt)}; "
            "U-Net and floor: dense)\n"
        )
        budgets = sorted(timed.get((dataset, protocol, prompt, shots), {}))
        extra = "".join(f" Dice at {b:g} s (equal wall-clock; steps) |" for b in budgets)
        print(
            f"| method | seeds | Dice (slices) | HD95 mm (slices) | trainable | steps (best) | train s |{extra}"
        )
        print("|---|---|---|---|---|---|---|" + "---|" * len(budgets))
        for m in [m for m in ORDER if m in methods]:
            rs = methods[m]
            dice = [r["summary"]["slice"]["all"]["dice"]["mean"] for r in rs]
            hd = [r["summary"]["slice"]["all"].get("hd95_mm", {}).get("mean", math.nan) for r in rs]
            params = rs[0].get("trainable_parameters")
            secs = statistics.fmean(r.get("train_seconds") or 0 for r in rs)
            steps = "/".join(f"{r.get('steps_done', '-')} ({r.get('best_step', '-')})" for r in rs)
            shown = f"{params:,}" if params else "-"
            cols = ""
            for budget in budgets:
                ts = timed[(dataset, protocol, prompt, shots)][budget].get(m, [])
                tdice = [t["summary"]["slice"]["all"]["dice"]["mean"] for t in ts]
                tsteps = "/".join(str(t.get("steps_done", "-")) for t in ts)
                cols += f" {fmt(tdice)} ({len(ts)} seeds; {tsteps}) |" if ts else " - |"
            print(f"| {m} | {len(rs)} | {fmt(dice)} | {fmt(hd, 1)} | {shown} | {steps} | {secs:.0f} |{cols}")
            plot_data[(f"{dataset} {protocol}", prompt, m)][shots] = (
                statistics.fmean(dice),
                statistics.stdev(dice) if len(dice) > 1 else 0,
            )
        for ref, label, compared in REFERENCES:
            if ref not in methods:
                continue
            others = [m for m in ORDER if m in methods and m != ref and compared(m)]
            if ref in FROZEN and "salt" in methods:
                others.append("salt")  # the same adapter with the decoder training
            if not others:
                continue
            print(f"\n{label} minus method, mean per-slice Dice difference [95% paired bootstrap CI]:\n")
            for m in others:
                diffs, unpaired, diffs_fp, fps = [], 0, [], 0
                for r in methods[ref]:
                    other = next((o for o in methods[m] if o["seed"] == r["seed"]), None)
                    if other is None:
                        continue
                    base = Path(args.runs) / dataset
                    if "protocol" in r.get("split", {}):  # the issue-12 sweep keeps protocols apart
                        base = base / protocol
                    base = base / f"shots{shots}" / f"seed{r['seed']}"
                    a, b = per_slice(r, base / ref, prompt), per_slice(other, base / m, prompt)
                    if not (a and b):
                        unpaired += 1
                        continue
                    for k in sorted(a.keys() | b.keys()):
                        x, y = a.get(k), b.get(k)
                        if x is not None and y is not None:
                            diffs.append(x - y)
                        # every slice-class; an empty prediction where the truth is empty scores 1
                        diffs_fp.append(_or1(x) - _or1(y))
                        fps += (x is None) != (y is None)  # one predicts a structure the slice lacks
                note = f"; {unpaired} seed(s) without per-slice scores left out" if unpaired else ""
                if diffs:
                    mean, lo, hi = bootstrap_ci(np.array(diffs))
                    print(
                        f"- vs {m}: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={len(diffs)} slice-class pairs{note})"
                    )
                if fps:
                    mean, lo, hi = bootstrap_ci(np.array(diffs_fp))
                    print(
                        f"  - every slice-class, a rightly empty prediction scoring 1 ({fps} pairs where one "
                        f"method predicts a structure the slice lacks): {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                        f"(n={len(diffs_fp)})"
                    )
                elif unpaired:
                    print(f"- vs {m}: no per-slice scores (neither in the rows nor in --runs {args.runs})")
        print()
    if plot_data:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        datasets = sorted({d for d, _, _ in plot_data})
        modes = sorted({p for _, p, _ in plot_data})
        fig, axes = plt.subplots(
            len(datasets), len(modes), figsize=(5.5 * len(modes), 3.8 * len(datasets)), squeeze=False
        )
        for (row, d), (col, p) in itertools.product(enumerate(datasets), enumerate(modes)):
            ax = axes[row, col]
            for m in ORDER:
                pts = plot_data.get((d, p, m))
                if not pts:
                    continue
                xs = sorted(pts)
                ax.errorbar(
                    xs,
                    [pts[x][0] for x in xs],
                    yerr=[pts[x][1] for x in xs],
                    marker="s" if m in BASELINES else "o",
                    ls="--" if m in BASELINES else "-",
                    color=plt.get_cmap("tab20")(ORDER.index(m) % 20),  # one colour per method
                    capsize=3,
                    label=m,
                    lw=2.5 if m == "salt" else 1,
                )
                ax.set_xticks(xs)
            ax.set_title(f"{d}, prompt {p}")
            ax.set_xlabel("training slices (shots)")
            ax.set_ylabel("test Dice (mean ± std over seeds)")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=90, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
