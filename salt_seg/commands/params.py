"""``salt-seg params``: trainable-parameter accounting of an adapter on a SAM variant, per layer type and total.

With ``--config`` it counts what ``salt-seg train --config`` trains: the model is built by
:func:`salt_seg.training.model.build_training_model` from the same config, so the total equals the run's
``trainable_parameters``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from salt_seg.commands.common import add_base_model_flags, add_set_flag

if TYPE_CHECKING:
    from salt_seg.adapters.config import AdapterConfig

HELP = "count trainable parameters of an adapter on a SAM variant (per layer type, total, share of SAM)"
DESCRIPTION = (
    "Count what an adapter config trains on a SAM variant, per adapted layer type and declared part (LayerNorms, "
    "position embedding, ...), with the total as a share of the SAM model as built here. The SALT paper's "
    "percentages are of SAM ViT-B + CLIP ViT-B/32 (about 241M), so they are smaller than the ones printed here. "
    "Example (the paper's SALT r_lora=4 budget): salt-seg params --variant vit_b --image-size 512 --adapter salt "
    "--rank attn=760 --rank mlp=50 --rank neck=250 --neck --r-lora 4. With --config, counts exactly what "
    "'salt-seg train --config FILE' trains (the config's base, image size, full-resolution branch, adapter with "
    "its decoder/norm/token settings, one class token per dataset class when train.prompt is auto or mixed): "
    "salt-seg params --config configs/builtin_salt.yaml"
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


#: flags that describe the model and adapter themselves; with --config, the config does (changed with --set)
MODEL_FLAGS = (
    ("--variant", "variant"),
    ("--checkpoint", "checkpoint"),
    ("--adapter", "adapter"),
    ("--image-size", "image_size"),
    ("--rank", "rank"),
    ("--r-lora", "r_lora"),
    ("--neck", "neck"),
    ("--hires", "hires"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="count what 'salt-seg train --config FILE' trains (model, adapter, class tokens, branch as train "
        "builds them); --set then overrides config keys (e.g. adapter.r_lora=8), as for train",
    )
    add_base_model_flags(parser)
    parser.add_argument("--adapter", default=None, choices=ADAPTER_NAMES, help="adapter name (default: salt)")
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
        "--num-classes",
        type=int,
        default=None,
        help="learned class prompt tokens to count (default 0; with --config: the dataset's classes)",
    )
    parser.add_argument(
        "--hires",
        action="store_true",
        help="count the full-resolution mask branch too (a checkpoint that carries one counts it anyway)",
    )
    add_set_flag(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def rank_override(text: str) -> str:
    """A ``--rank [TYPE=]VALUE`` flag as the ``--set`` item it stands for (checked once, with the config).

    ``attn=760`` -> ``adapter.rank.attn=760``; ``fraction:0.5`` -> ``adapter.rank.default={fraction: 0.5}``.
    """
    key, sep, value = text.partition("=")
    if not sep:
        key, value = "default", text
    kind, colon, amount = value.strip().partition(":")
    spec = f"{{{kind.strip()}: {amount.strip()}}}" if colon else value.strip()
    return f"adapter.rank.{key.strip()}={spec}"


def build_config(args: argparse.Namespace) -> AdapterConfig:
    """The adapter config the flags describe: each flag becomes the ``--set adapter.KEY=VALUE`` item it stands
    for, the ``--set`` overrides (``adapter.`` optional) come last, and the config is parsed once."""
    # lazy: keeps --help fast (the adapters package imports torch)
    from salt_seg.adapters.config import AdapterConfig
    from salt_seg.configio import from_dict
    from salt_seg.training.config import override_config

    items = [f"adapter.name={args.adapter or 'salt'}", *(rank_override(t) for t in args.rank)]
    if args.r_lora is not None:
        items.append(f"adapter.r_lora={args.r_lora}")
    if args.neck:
        items.append("adapter.adapt_neck=true")
    items += [o if o.strip().startswith("adapter.") else f"adapter.{o.strip()}" for o in args.overrides]
    return from_dict(AdapterConfig, override_config({}, items)["adapter"])


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from salt_seg.adapters.params import count_parameters, format_parameter_report
    from salt_seg.model.variants import build_model

    if args.num_classes is not None and args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    if args.config:
        return _run_config(args)
    args.variant = args.variant or "vit_b"
    num_classes = args.num_classes or 0
    config = build_config(args)
    base_hash = None
    if args.checkpoint:
        from salt_seg.model.checkpoint import load_base_model

        model, info = load_base_model(
            args.variant,
            args.checkpoint,
            image_size=args.image_size,
            num_classes=num_classes,
            hires=True if args.hires else None,
        )
        base_hash = getattr(info, "content_hash", None)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # energy ranks of an untrained model are only indicative; shapes are exact
            model = build_model(
                args.variant, image_size=args.image_size, num_classes=num_classes, hires=args.hires
            )
    report = count_parameters(model, config, base_hash=base_hash, progress=not args.json)
    size = model.image_size
    if args.json:
        out = {"variant": args.variant, "image_size": size, "checkpoint": args.checkpoint, **report.to_dict()}
        print(json.dumps(out, indent=2))
        return 0
    title = f"{args.variant} at {size}x{size}, adapter {config.name} (trainable parameters)"
    print(format_parameter_report(report, title))
    return 0


def _run_config(args: argparse.Namespace) -> int:
    """``params --config``: build the model as ``train`` does and count what its adapter config trains."""
    import json

    from salt_seg.adapters.params import count_parameters, format_parameter_report
    from salt_seg.training.config import load_config
    from salt_seg.training.model import build_training_model, config_class_ids, needs_class_tokens

    given = [flag for flag, dest in MODEL_FLAGS if getattr(args, dest)]
    if given:
        raise ValueError(
            f"{', '.join(given)}: with --config the model and adapter come from the config; change them with "
            "--set (e.g. --set model.variant=tiny --set adapter.r_lora=8)"
        )
    cfg = load_config(args.config, args.overrides)
    if not needs_class_tokens(cfg):
        num_classes = 0  # box/point prompts: no class tokens, whatever the dataset's classes
    elif args.num_classes is not None:
        num_classes = args.num_classes
    else:
        try:
            num_classes = len(config_class_ids(cfg))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(
                f"{str(exc).strip()}; train.prompt {cfg.train.prompt} trains one class token per class of the "
                "dataset: prepare it, or give --num-classes N"
            ) from None
    built = build_training_model(cfg, num_classes, inject=False)
    adapter = cfg.adapter
    report = count_parameters(built.model, adapter, base_hash=built.base_hash, progress=not args.json)
    size = built.model.image_size
    if args.json:
        out = {
            "config": args.config,
            "variant": built.model.variant,
            "image_size": size,
            "checkpoint": cfg.model.checkpoint,
            "num_classes": num_classes,
            **report.to_dict(),
        }
        print(json.dumps(out, indent=2))
        return 0
    tokens = f", {num_classes} class token(s)" if num_classes else ""
    title = (
        f"{built.model.variant} at {size}x{size}, adapter {adapter.name}{tokens}: what 'salt-seg train --config "
        f"{args.config}' trains (trainable parameters)"
    )
    print(format_parameter_report(report, title))
    return 0
