"""``salt-seg library``: keep several adapters of one base in a folder and use them by name.

``add RUN|ADAPTER --name NAME``, ``list``, ``remove NAME`` and ``compress`` (a joint-SVD analysis of how far the
adapters' weight updates share a basis, with the Dice each entry keeps per shared rank when ``--eval`` or
``--dice`` gives it evaluation data). ``salt-seg predict --model NAME`` then loads an entry. Heavy imports
happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELP = "an adapter library: add/list/remove adapters of one base, use them as predict --model NAME; compress"
DESCRIPTION = (
    "A folder (default $SALT_SEG_LIBRARY or ~/.salt_seg/library) of adapters trained on the same base weights, "
    "checked by the base's content hash: the first adapter fixes the base, another base's adapter is refused. "
    "'salt-seg predict --model NAME' loads an entry; the viewer lists them and switches without reloading the "
    "base. 'compress' stacks the entries' weight updates per layer, takes one joint SVD with a shared basis U "
    "per layer (Sub-MoE's Experts Union Decomposition; --clusters N: per group of entries with similar output "
    "changes), and reports size against reconstruction error and output difference per adapter over the shared "
    "rank, and Dice and Dice retained per task for entries with evaluation data (--eval NAME=RUN_DIR, --dice)."
)


def _add_library_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--library",
        default=None,
        metavar="DIR",
        help="library folder (default $SALT_SEG_LIBRARY or ~/.salt_seg/library)",
    )


def _rank(text: str) -> int | None:
    """``--rank``: an integer, or ``full`` (``None``)."""
    if text == "full":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'full', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="copy a run's (or an adapter file's) adapter into the library")
    p.add_argument("source", metavar="RUN|ADAPTER", help="trained run directory or adapter .safetensors file")
    p.add_argument("--name", required=True, help="entry name (letters, digits, '.', '_', '-')")
    p.add_argument("--force", action="store_true", help="replace an entry of that name")
    _add_library_flag(p)
    p = sub.add_parser("list", help="the library's entries")
    _add_library_flag(p)
    p = sub.add_parser("remove", help="drop an entry")
    p.add_argument("name")
    _add_library_flag(p)
    p = sub.add_parser(
        "compress",
        help="joint SVD of the entries' weight updates: size vs error per adapter over shared ranks",
    )
    p.add_argument(
        "--rank",
        dest="ranks",
        type=_rank,
        action="append",
        default=None,
        metavar="R",
        help="shared rank per layer, or 'full' (repeatable; default: full, 64, 32, 16, 8, 4); 0 drops the "
        "updates (each entry's other tensors alone: the floor)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the compressed library at the last --rank to this .safetensors file",
    )
    p.add_argument(
        "--eval",
        dest="evals",
        action="append",
        default=None,
        metavar="NAME=RUN_DIR",
        help="score entry NAME on the test split of this training run, as 'salt-seg evaluate --model RUN_DIR' "
        "does, as trained and at every rank (repeatable)",
    )
    p.add_argument(
        "--dice",
        action="store_true",
        help="score every entry on the test split of the run it was added from (recorded at 'library add'); "
        "entries whose run has no split are reported without Dice",
    )
    p.add_argument(
        "--clusters",
        type=int,
        default=1,
        metavar="N",
        help="group the entries into at most N groups by the similarity of their output changes "
        "(hierarchical clustering) and give each group its own shared basis (default 1: one group)",
    )
    p.add_argument(
        "--plot", default=None, metavar="FILE", help="PNG: Dice retained against size, a line per entry"
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    _add_library_flag(p)


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def run(args: argparse.Namespace) -> int:
    from salt_seg.library import Library

    lib = Library.open(args.library)
    if args.action == "add":
        entry = lib.add(args.source, args.name, force=args.force)
        print(
            f"added {entry['name']} ({entry['method']}, {_fmt_params(entry['parameters'])} parameters) to {lib.root} "
            f"(base {entry['base_hash'][:12]}…)"
        )
        return 0
    if args.action == "remove":
        lib.remove(args.name)
        print(f"removed {args.name} from {lib.root}")
        return 0
    if args.action == "list":
        entries = lib.entries()
        if not entries:
            print(f"{lib.root}: empty library")
            return 0
        index = lib.index()
        print(f"{lib.root}: base {index['base_name']} ({index['base_hash'][:12]}…)")
        print(f"{'name':<24} {'method':<8} {'params':>9}  {'added':<24} classes")
        for name, e in entries.items():
            classes = e.get("classes")
            names = list(classes.values()) if isinstance(classes, dict) else classes or []
            print(
                f"{name:<24} {e['method'] or '?':<8} {_fmt_params(e['parameters']):>9}  {e['added']:<24} {names}"
            )
        return 0
    assert args.action == "compress"
    from salt_seg.commands.common import resolve_device
    from salt_seg.library import compress_library, format_compression, plot_compression

    device = resolve_device(args.device)
    runs = _eval_runs(lib, args.evals or [], dice=args.dice)
    if args.plot and not runs:
        raise ValueError(f"--plot {args.plot}: no entry to score; pass --eval NAME=RUN_DIR or --dice")
    scorers = {name: _scorer(run, device) for name, run in runs.items()}
    report = compress_library(
        lib, ranks=args.ranks, out=args.out, device=device, clusters=args.clusters, scorers=scorers
    )
    print(format_compression(report))
    if args.out:
        print(f"wrote {args.out}")
    if args.plot:
        print(f"wrote {plot_compression(report, args.plot)}")
    return 0


def _eval_runs(lib: Any, evals: list[str], *, dice: bool) -> dict[str, Path]:
    """Entry name -> the run directory whose test split scores it: ``--eval NAME=RUN_DIR`` pairs, and with
    ``--dice`` each entry's recorded run where it has a split and its dataset is there (``--eval`` wins).

    Raises:
        ValueError: a malformed pair, an unknown entry, or a run without ``split.json``, ``config.yaml`` or its
            dataset.
    """
    runs: dict[str, Path] = {}
    entries = lib.entries()
    if dice:
        for name, entry in entries.items():
            run = entry.get("run") or _run_of_source(entry.get("source"))
            if run and _eval_problem(Path(run)) is None:
                runs[name] = Path(run)
    for pair in evals:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--eval {pair}: expected NAME=RUN_DIR")
        if name not in entries:
            raise ValueError(
                f"--eval {pair}: {name!r} is not in the adapter library {lib.root} "
                f"(entries: {', '.join(entries) or 'none'})"
            )
        problem = _eval_problem(Path(folder))
        if problem:
            raise ValueError(f"--eval {pair}: {problem}")
        runs[name] = Path(folder)
    return runs


def _eval_problem(run: Path) -> str | None:
    """Why ``run`` cannot score an entry (``None``: it can): no folder, no split, no config or no dataset."""
    from salt_seg.runs import run_dataset

    if not run.is_dir():
        return f"{run} is not a run directory"
    for needed, why in (("split.json", "the test split to score"), ("config.yaml", "the dataset path")):
        if not (run / needed).is_file():
            return f"{run} has no {needed} ({why})"
    data, _ = run_dataset(run)
    if not data or not Path(data).exists():
        return f"the dataset {data or '(none)'} named in {run / 'config.yaml'} is missing"
    return None


def _run_of_source(source: str | None) -> Path | None:
    """The run directory of an adapter file recorded by an older library index (no ``run`` field)."""
    if not source:
        return None
    from salt_seg.inference.loading import run_dir_of

    return run_dir_of(Path(source))


def _scorer(run: Path, device: Any) -> Callable[[Any], float]:
    """Mean Dice of a model in memory on ``run``'s test split, the way ``salt-seg evaluate --model RUN`` scores
    it (label map, the model's default prompt; volume level where the split has whole volumes, else slices)."""
    from salt_seg.evaluation.model_eval import evaluate_run

    def score(loaded: Any) -> float:
        result = evaluate_run(run, loaded=loaded, device=device, progress=False)
        level = "volume" if "volume" in result.summary else "slice"
        return float(result.summary[level]["all"]["dice"]["mean"])

    return score
