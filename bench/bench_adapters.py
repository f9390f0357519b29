"""Adapter benchmark (issue 3): per-layer forward+backward and whole-encoder training steps.

Usage::

    python bench/bench_adapters.py [--part layers|encoder|all] [--repeats 5] [--tokens 1024 4096]
                                   [--encoder-repeats 3] [--image-size 256] [--batch 2] [--threads N] [--json]

Per layer (ViT-B shapes 768→2304, 768→768, 768→3072, 3072→768; r ∈ {8, 64, released}): forward + backward of
``N`` tokens (input gradient included, as inside a network) for SALT's default (``auto``), factored and dense-delta
modes, the released code's dense rebuild (``salt-ref``), LoRA with the same r_lora, and a fully trainable
``nn.Linear``. Whole ``vit_b`` encoder: one AdamW training step (forward, backward, step) of SALT at the released
ranks (r_lora 4), LoRA r=4 on qkv, full fine-tuning and salt-reference; and merged SALT inference vs the plain
encoder. Medians of interleaved repeats (every variant once per round). Weights are random: timings do not depend
on their values. SVD factors come from ``$SALT_SEG_CACHE`` after the first run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from salt_seg.adapters import (
    AdapterConfig,
    LoraLayer,
    SaltLayer,
    compute_svd,
    inject_adapters,
    merge_adapters,
)
from salt_seg.adapters import trainable_parameters as adapter_trainable

SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "lin1": (768, 3072), "lin2": (3072, 768)}
RELEASED = {"qkv": 760, "proj": 760, "lin1": 50, "lin2": 50}
R_LORA = 4


def _median_interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Run each fn once as warm-up, then ``repeats`` rounds of all fns in turn; median seconds per fn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _fwd_bwd(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        layer(x).backward(grad)

    return step


def bench_layers(tokens: list[int], repeats: int, ranks: list[str]) -> list[dict]:
    rows = []
    for shape_name, (fan_in, out) in SHAPES.items():
        torch.manual_seed(0)
        base = nn.Linear(fan_in, out)
        base.requires_grad_(False)
        factors = compute_svd(base.weight)
        for r_name in ranks:
            r = RELEASED[shape_name] if r_name == "released" else int(r_name)
            layers: dict[str, nn.Module] = {
                "salt_auto": SaltLayer(base, factors, r, R_LORA, compute="auto"),
                "salt_factored": SaltLayer(base, factors, r, R_LORA, compute="factored"),
                "salt_dense": SaltLayer(base, factors, r, R_LORA, compute="dense"),
                "salt_ref": SaltLayer(
                    base, factors, r, R_LORA, init="reference", relu="reference", compute="reference"
                ),
                "lora": LoraLayer(base, R_LORA),
            }
            full = nn.Linear(fan_in, out)
            full.load_state_dict(base.state_dict())
            full.requires_grad_(True)
            layers["full"] = full
            for n in tokens:
                x = torch.randn(n, fan_in, requires_grad=True)
                g = torch.randn(n, out)
                med = _median_interleaved({k: _fwd_bwd(m, x, g) for k, m in layers.items()}, repeats)
                with torch.enable_grad():
                    picked = layers["salt_auto"].compute_mode(x)  # type: ignore[operator]
                best = min(med["salt_factored"], med["salt_dense"])
                row = {
                    "layer": shape_name,
                    "in": fan_in,
                    "out": out,
                    "r": r,
                    "r_label": r_name,
                    "tokens": n,
                    "ms": {k: 1000 * v for k, v in med.items()},
                    "auto_picked": picked,
                    "auto_vs_best": med["salt_auto"] / best,
                    "salt_vs_lora": med["salt_auto"] / med["lora"],
                    "ref_vs_salt": med["salt_ref"] / med["salt_auto"],
                }
                rows.append(row)
                print(json.dumps(row), flush=True) if _VERBOSE else None
    return rows


def _encoder_model(variant: str, image_size: int, adapter: AdapterConfig | None):
    from salt_seg.model import build_model

    torch.manual_seed(0)
    model = build_model(variant, image_size=image_size)
    model.prompt_encoder = None  # only the encoder is timed
    model.mask_decoder = None
    if adapter is not None:
        inject_adapters(model, adapter, progress=_VERBOSE)
    model.train()
    return model


def bench_encoder(variant: str, image_size: int, batch: int, repeats: int) -> dict:
    extras = {"train_class_tokens": False}
    configs = {
        "salt": AdapterConfig(
            name="salt", r_lora=4, **extras
        ),  # released ranks (fractions resolve to 760/50)
        "lora_qkv": AdapterConfig(
            name="lora", r_lora=4, targets=["image_encoder.blocks.*.attn.qkv"], **extras
        ),
        "full": AdapterConfig(name="full", **extras),
        "salt_ref": AdapterConfig(
            name="salt", r_lora=4, init="reference", relu="reference", compute="reference", **extras
        ),
    }
    models = {k: _encoder_model(variant, image_size, c) for k, c in configs.items()}
    x = torch.randn(batch, 3, image_size, image_size)
    steps = {}
    for name, model in models.items():
        params = adapter_trainable(model)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)

        def step(model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            model.image_encoder(x).square().mean().backward()
            opt.step()

        steps[name] = step
    med = _median_interleaved(steps, repeats)
    n_trainable = {k: sum(p.numel() for p in adapter_trainable(m)) for k, m in models.items()}
    ranks = sorted({r for r in models["salt"]._salt_seg_adapter.ranks.values() if r is not None})
    del models, steps

    # merged inference vs the plain encoder
    plain = _encoder_model(variant, image_size, None).eval()
    merged = _encoder_model(variant, image_size, configs["salt"]).eval()
    merge_adapters(merged)
    with torch.inference_mode():
        inf = _median_interleaved(
            {"plain": lambda: plain.image_encoder(x), "salt_merged": lambda: merged.image_encoder(x)},
            repeats + 2,
        )
    return {
        "variant": variant,
        "image_size": image_size,
        "batch": batch,
        "salt_ranks": ranks,
        "train_step_s": med,
        "trainable_params": n_trainable,
        "ref_vs_salt": med["salt_ref"] / med["salt"],
        "inference_s": inf,
        "merged_vs_plain": inf["salt_merged"] / inf["plain"],
    }


_VERBOSE = False


def main() -> None:
    global _VERBOSE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["layers", "encoder", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per layer cell")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--ranks", nargs="+", default=["8", "64", "released"])
    ap.add_argument("--encoder-repeats", type=int, default=3)
    ap.add_argument("--variant", default="vit_b")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    _VERBOSE = args.verbose
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "r_lora": R_LORA}
    if args.part in ("layers", "all"):
        rows = bench_layers(args.tokens, args.repeats, args.ranks)
        result["layers"] = rows
        result["layers_summary"] = {
            "max_auto_vs_best": max(r["auto_vs_best"] for r in rows),
            "max_salt_vs_lora_r_le_64": max((r["salt_vs_lora"] for r in rows if r["r"] <= 64), default=None),
        }
    if args.part in ("encoder", "all"):
        result["encoder"] = bench_encoder(args.variant, args.image_size, args.batch, args.encoder_repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if "layers" in result:
        print(
            "| layer | r | tokens | auto | factored | dense | salt-ref | lora | full | auto picks | auto/best | salt/lora |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in result["layers"]:
            ms = r["ms"]
            print(
                f"| {r['layer']} {r['in']}→{r['out']} | {r['r']} | {r['tokens']} | {ms['salt_auto']:.1f} | "
                f"{ms['salt_factored']:.1f} | {ms['salt_dense']:.1f} | {ms['salt_ref']:.1f} | {ms['lora']:.1f} | "
                f"{ms['full']:.1f} | {r['auto_picked']} | {r['auto_vs_best']:.2f} | {r['salt_vs_lora']:.2f} |"
            )
        print(json.dumps(result["layers_summary"]))
    if "encoder" in result:
        e = result["encoder"]
        print(f"whole {e['variant']} encoder, {e['image_size']}², batch {e['batch']}, one AdamW step (s):")
        for k, v in e["train_step_s"].items():
            print(f"  {k:10s} {v:.3f} s   trainable {e['trainable_params'][k]:,}")
        print(
            f"  salt-ref / salt = {e['ref_vs_salt']:.2f}; merged inference / plain = {e['merged_vs_plain']:.3f}"
        )


if __name__ == "__main__":
    main()
