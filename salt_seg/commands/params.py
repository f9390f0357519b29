"""``salt-seg params``: trainable-parameter accounting of an adapter on a SAM variant, per layer type and total."""

from __future__ import annotations

import argparse

from salt_seg.commands.common import add_base_model_flags, add_set_flag

HELP = "count trainable parameters of an adapter on a SAM variant (per layer type, total, share of SAM)"
DESCRIPTION = (
    "Count what an adapter config trains on a SAM variant, per adapted layer type and declared part (LayerNorms, "
    "position embedding, ...), with the total as a share of the SAM model as built here. The SALT paper's "
    "percentages are of SAM ViT-B + CLIP ViT-B/32 (about 241M), so they are smaller than the ones printed here. "
    "Example (the paper's SALT r_lora=4 budget): salt-seg params --variant vit_b --image-size 512 --adapter salt "
    "--rank attn=760 --rank mlp=50 --rank neck=250 --neck --r-lora 4"
)
ADAPTER_NAMES = (
    "salt",
    "ssam",
    "svfit",
    "lora",
    "effort",
    "full",
    "none",
)  # kept in sync with the registry (tested)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_model_flags(parser, variant_default="vit_b")
    parser.add_argument(
        "--adapter", default="salt", choices=ADAPTER_NAMES, help="adapter name (default: salt)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: native)")
    parser.add_argument(
        "--rank",
        action="append",
        default=[],
        metavar="[TYPE=]R",
        help="rank for a layer type (attn, mlp, neck, other) or all: 760, fraction:0.5 or energy:0.99 (repeatable)",
    )
    parser.add_argument(
        "--r-lora", type=int, default=None, help="rank of the low-rank term (SALT X·Y, LoRA B·A)"
    )
    parser.add_argument("--neck", action="store_true", help="also adapt the two neck convolutions")
    parser.add_argument(
        "--num-classes", type=int, default=0, help="learned class prompt tokens to count (default 0)"
    )
    parser.add_argument(
        "--hires",
        action="store_true",
        help="count the full-resolution mask branch too (a checkpoint that carries one counts it anyway)",
    )
    add_set_flag(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_config(args: argparse.Namespace):  # -> AdapterConfig
    """The adapter config the flags describe (``--set`` overrides applied last)."""
    from salt_seg.adapters.config import AdapterConfig, apply_overrides, parse_rank_text

    raw: dict = {"name": args.adapter}
    if args.rank:
        ranks: dict = {}
        for text in args.rank:
            key, spec = parse_rank_text(text)
            ranks[key] = spec
        raw["rank"] = ranks
    if args.r_lora is not None:
        raw["r_lora"] = args.r_lora
    if args.neck:
        raw["adapt_neck"] = True
    return AdapterConfig.from_dict(apply_overrides(raw, args.overrides))


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from salt_seg.adapters.params import count_parameters, format_report
    from salt_seg.model.variants import build_model

    if args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    config = build_config(args)
    base_hash = None
    if args.checkpoint:
        from salt_seg.model.checkpoint import load_base_model

        model, info = load_base_model(
            args.variant,
            args.checkpoint,
            image_size=args.image_size,
            num_classes=args.num_classes,
            hires=True if args.hires else None,
        )
        base_hash = getattr(info, "content_hash", None)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # energy ranks of an untrained model are only indicative; shapes are exact
            model = build_model(
                args.variant, image_size=args.image_size, num_classes=args.num_classes, hires=args.hires
            )
    report = count_parameters(model, config, base_hash=base_hash, progress=not args.json)
    size = model.image_size
    if args.json:
        out = {"variant": args.variant, "image_size": size, "checkpoint": args.checkpoint, **report.to_dict()}
        print(json.dumps(out, indent=2))
        return 0
    title = f"{args.variant} at {size}x{size}, adapter {config.name} (trainable parameters)"
    print(format_report(report, title))
    return 0
