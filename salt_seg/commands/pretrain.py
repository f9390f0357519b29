"""``salt-seg pretrain``: train a small SAM-architecture base from scratch on synthetic objects."""

from __future__ import annotations

import argparse

from salt_seg.commands.common import add_runtime_flags, add_set_flag

HELP = "pretrain a small SAM-architecture base model from scratch on synthetic objects (box/point prompts)"
DESCRIPTION = (
    "Pretrain a small SAM-architecture model from random weights on the synthetic generator with box and point "
    "prompts (objectness), with the training machinery of 'salt-seg train' (progress, checkpoints, --resume). "
    "Writes a run directory, the exported float16 base (--export) and its held-out Dice."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", default="tiny", choices=("tiny", "small"), help="architecture (default tiny)"
    )
    parser.add_argument("--image-size", type=int, default=128, help="input side in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--lr", type=float, default=4e-4, help="peak AdamW learning rate (default 4e-4)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and training-stream seed")
    parser.add_argument("--out", default=None, help="run directory to create")
    parser.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue an interrupted pretraining run"
    )
    parser.add_argument(
        "--init",
        default=None,
        help="continue from an exported base (e.g. a second stage at a lower learning rate)",
    )
    parser.add_argument(
        "--task",
        default="objects",
        choices=("objects", "anatomy"),
        help="objects: synthetic shapes (the v1 bases); anatomy: synthetic anatomy with objects mixed in (v2)",
    )
    parser.add_argument(
        "--hires",
        action="store_true",
        help="add the full-resolution mask branch (logits at the input side); kept when --init has one",
    )
    parser.add_argument("--export", default=None, help="write the float16 base checkpoint here when done")
    parser.add_argument("--heldout", type=int, default=100, help="held-out images to score (default 100)")
    parser.add_argument("--no-progress", action="store_true")
    add_set_flag(parser)
    add_runtime_flags(parser)


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from salt_seg.commands.common import resolve_device
    from salt_seg.model.builtin import resolve_checkpoint
    from salt_seg.training.pretrain import run_pretraining

    device = resolve_device(args.device, args.threads)
    if not args.out and not args.resume:
        raise ValueError("--out RUN_DIR is required (or --resume RUN_DIR)")
    t0 = time.perf_counter()
    scores, run_dir = run_pretraining(
        variant=args.variant,
        image_size=args.image_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        run_dir=Path(args.resume or args.out),
        resume=bool(args.resume),
        device=device,
        export=Path(args.export) if args.export else None,
        heldout=args.heldout,
        overrides=args.overrides,
        progress=not args.no_progress,
        init=Path(resolve_checkpoint(args.init)) if args.init else None,  # type: ignore[arg-type]
        task=args.task,
        hires=True if args.hires else None,
    )
    peak = None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    except (ImportError, OSError):
        pass
    print(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "heldout_dice_box": round(scores.box, 4),
                "heldout_dice_fill_box_baseline": round(scores.fill_box, 4),
                "heldout_dice_one_point": round(scores.one_point, 4),
                "heldout_objects": scores.n_objects,
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mib": peak,
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
    return 0
