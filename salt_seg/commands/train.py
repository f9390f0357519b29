"""``salt-seg train``: few-shot training from a YAML config."""

from __future__ import annotations

import argparse

from salt_seg.commands.common import add_runtime_flags, add_set_flag

HELP = "train an adapter (SALT, LoRA, ...) on a few-shot dataset from a YAML config"
DESCRIPTION = (
    "Train an adapter on a few-shot dataset. Settings come from a YAML config (see configs/) and --set overrides; "
    "unknown keys are errors. Writes a run directory (config, split, metrics, plots, checkpoints, final adapter). "
    "Under torchrun (torchrun --nproc_per_node N -m salt_seg train ...) it trains with DDP; rank 0 writes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="experiment YAML (default: built-in defaults)")
    parser.add_argument("--out", default=None, help="run directory to create (must not exist or be empty)")
    parser.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run exactly"
    )
    parser.add_argument(
        "--continue",
        dest="continue_from",
        default=None,
        metavar="RUN_DIR",
        help="continue a finished run on this config's dataset with its new classes (continual training; the "
        "run's classes are kept); the config defaults to the run's own, --set data.path=... names the new "
        "dataset, train.continual picks sequential or osft",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="repeat with these seeds (each changes shots and initialisation); runs go to OUT/seed_N and "
        "OUT/seeds_summary.json reports mean ± std",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_flag(parser)
    add_runtime_flags(parser)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from salt_seg.commands.common import resolve_device
    from salt_seg.io import atomic_write_json
    from salt_seg.runs import RUN_MARKER
    from salt_seg.training.config import load_config
    from salt_seg.training.loop import train

    device = resolve_device(args.device, args.threads)
    if args.resume:
        if args.config or args.overrides or args.seeds:
            raise ValueError(
                "--resume takes the run's own config; do not combine it with --config/--set/--seeds"
            )
        run_dir = Path(args.resume)
        if not (run_dir / RUN_MARKER).is_file():
            raise FileNotFoundError(f"{run_dir}: not a run directory (no {RUN_MARKER})")
        cfg = load_config(run_dir / RUN_MARKER)
        res = train(cfg, run_dir, resume=True, device=device, progress=not args.no_progress)
        print(f"resumed {run_dir}: best validation Dice {res.best_val_dice:.4f} at step {res.best_step}")
        return 0
    if not args.out:
        raise ValueError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.continue_from:
        prior = Path(args.continue_from)
        if not (prior / RUN_MARKER).is_file():
            raise FileNotFoundError(f"{prior}: not a run directory (no {RUN_MARKER})")
        if args.seeds:
            raise ValueError("--continue trains one run; do not combine it with --seeds")
        base_config = args.config if args.config else prior / RUN_MARKER
        cfg = load_config(base_config, [*args.overrides, f"train.continue_from={prior}"])
    else:
        cfg = load_config(args.config, args.overrides)
    if not args.seeds:
        res = train(cfg, args.out, device=device, progress=not args.no_progress)
        print(
            f"run {args.out}: validation Dice {res.initial_val_dice:.4f} -> best {res.best_val_dice:.4f} "
            f"(step {res.best_step}), {res.trainable_parameters:,} trainable parameters, {res.seconds:.0f} s"
        )
        return 0
    import statistics

    out = Path(args.out)
    results = []
    for seed in args.seeds:
        seeded = load_config(args.config, [*args.overrides, f"train.seed={seed}"])
        res = train(seeded, out / f"seed_{seed}", device=device, progress=not args.no_progress)
        results.append(
            {
                "seed": seed,
                "best_val_dice": res.best_val_dice,
                "best_step": res.best_step,
                "seconds": res.seconds,
            }
        )
        print(f"seed {seed}: best validation Dice {res.best_val_dice:.4f}")
    vals = [r["best_val_dice"] for r in results]
    summary = {
        "seeds": results,
        "val_dice_mean": statistics.fmean(vals),
        "val_dice_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
    }
    atomic_write_json(out / "seeds_summary.json", summary, default=str)
    print(
        f"validation Dice over {len(vals)} seeds: {summary['val_dice_mean']:.4f} ± {summary['val_dice_std']:.4f}"
    )
    print(json.dumps(summary["seeds"]))
    return 0
