"""Adapter benchmark (issue 3): per-layer forward+backward and whole-encoder training steps.

Usage::

    python bench/bench_adapters.py [--part layers|encoder|merged|floor|layer-floor|ratios|all] [--repeats 5] [--tokens 1024 4096]
                                   [--encoder-repeats 3] [--inference-repeats 11] [--floor-repeats 9]
                                   [--image-size 256] [--batch 2] [--threads N] [--json]

Per layer (ViT-B shapes 768→2304, 768→768, 768→3072, 3072→768; r ∈ {8, 64, released}): forward + backward of
``N`` tokens (input gradient included, as inside a network) for SALT's default (``auto``), factored and dense-delta
modes, the released code's dense rebuild (``salt-ref``), LoRA with the same r_lora, and a fully trainable
``nn.Linear``. Whole ``vit_b`` encoder: one AdamW training step (forward, backward, step) of SALT at the released
ranks (r_lora 4), LoRA r=4 on qkv, full fine-tuning and salt-reference; and merged SALT inference vs the plain
encoder. ``floor`` (issue 16): for every adapted linear of that encoder, at the token count it sees there, the
measured forward + backward of the frozen layer, LoRA r4 and SALT, and of each matrix product an exact SALT form
needs, summed into the best SALT / LoRA step ratio the products allow (``ratios`` = encoder + floor in one run).
Medians of interleaved repeats (every variant once per round, the order reversed every other round). Weights are
random: timings do not depend on their values. SVD factors come from ``$SALT_SEG_CACHE`` after the first run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from salt_seg.adapters import (
    AdapterConfig,
    LoraLayer,
    SaltLayer,
    adapter_layers,
    compute_svd,
    inject_adapters,
    merge_adapters,
)
from salt_seg.adapters import trainable_parameters as adapter_trainable

SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "lin1": (768, 3072), "lin2": (3072, 768)}
RELEASED = {"qkv": 760, "proj": 760, "lin1": 50, "lin2": 50}
R_LORA = 4


def _median_interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Run each fn once as warm-up, then ``repeats`` rounds of all fns in turn, the order reversed every other
    round (ABBA: a slow spell of the shared machine hits every fn alike); median seconds per fn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for i in range(repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fns[name]()
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


def bench_encoder(variant: str, image_size: int, batch: int, repeats: int, inference_repeats: int) -> dict:
    extras = {"train_class_tokens": False}
    configs = {
        "salt": AdapterConfig(
            name="salt", r_lora=4, **extras
        ),  # released ranks (fractions resolve to 760/50)
        "lora_qkv": AdapterConfig(
            name="lora", r_lora=4, targets=["image_encoder.blocks.*.attn.qkv"], **extras
        ),
        "full": AdapterConfig(name="full", **extras),
        "salt_ref": AdapterConfig(name="salt", r_lora=4, init="reference", relu="reference", **extras),
    }
    models = {k: _encoder_model(variant, image_size, c) for k, c in configs.items()}
    for layer in models["salt_ref"].modules():
        if isinstance(layer, SaltLayer):
            layer.compute = "reference"  # the released code's dense rebuild on every forward
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

    return {
        "variant": variant,
        "image_size": image_size,
        "batch": batch,
        "salt_ranks": ranks,
        "train_step_s": med,
        "trainable_params": n_trainable,
        "ref_vs_salt": med["salt_ref"] / med["salt"],
        **bench_merged(variant, image_size, batch, inference_repeats),
    }


def bench_merged(variant: str, image_size: int, batch: int, repeats: int) -> dict:
    """Merged SALT inference against the plain encoder (ABBA rounds), and what a merged wrapper adds per call."""
    x = torch.randn(batch, 3, image_size, image_size)
    plain = _encoder_model(variant, image_size, None).eval()
    merged = _encoder_model(
        variant, image_size, AdapterConfig(name="salt", r_lora=4, train_class_tokens=False)
    )
    merged.eval()
    merge_adapters(merged)
    wrappers = list(adapter_layers(merged).values())
    assert all(w.merged and type(w.base_layer) in (nn.Linear, nn.Conv2d) for w in wrappers)
    # the dispatch a merged wrapper adds (AdapterLayer.forward -> its plain nn.Linear), timed on a 4 x 4 layer
    # so that the product itself is negligible
    small = nn.Linear(4, 4).requires_grad_(False)
    small_wrapper = SaltLayer(small, compute_svd(small.weight), 2, 1)
    small_wrapper.merge()
    xs = torch.randn(1, 4)
    calls = 5000
    with torch.inference_mode():
        inf = _median_interleaved(
            {"plain": lambda: plain.image_encoder(x), "salt_merged": lambda: merged.image_encoder(x)}, repeats
        )
        per_call = _median_interleaved(
            {
                "plain": lambda: [small(xs) for _ in range(calls)],
                "merged": lambda: [small_wrapper(xs) for _ in range(calls)],
            },
            repeats,
        )
    wrapper_s = (per_call["merged"] - per_call["plain"]) / calls
    return {
        "inference_s": inf,
        "merged_vs_plain": inf["salt_merged"] / inf["plain"],
        "merged_wrappers": len(wrappers),
        "merged_wrapper_overhead_us_per_call": 1e6 * wrapper_s,
        "merged_wrapper_overhead_fraction": len(wrappers) * wrapper_s / inf["plain"],
    }


def _encoder_linear_tokens(variant: str, image_size: int, batch: int) -> Counter:
    """``(layer kind, in, out, tokens) -> count`` over the encoder's adapted linears, from one hooked forward
    (windowed blocks run qkv and proj on padded windows, so they see more tokens than the MLP)."""
    model = _encoder_model(variant, image_size, None)
    counts: Counter = Counter()
    hooks = []
    for name, mod in model.image_encoder.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if isinstance(mod, nn.Linear) and kind in SHAPES:

            def hook(m: nn.Module, inp: tuple, _out: object, kind: str = kind) -> None:
                x = inp[0]
                counts[(kind, x.shape[-1], m.out_features, x.numel() // x.shape[-1])] += 1

            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model.image_encoder(torch.randn(batch, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    return counts


def _floor_parts(fan_in: int, out: int, r: int, n: int, repeats: int) -> dict[str, float]:
    """Median ms of one layer's forward + backward (frozen ``nn.Linear`` with input gradient, LoRA r4, SALT
    ``auto`` at rank ``r``) and of every matrix product an exact SALT form needs, interleaved in one run."""
    torch.manual_seed(0)
    base = nn.Linear(fan_in, out)
    base.requires_grad_(False)
    factors = compute_svd(base.weight)
    salt = SaltLayer(base, factors, r, R_LORA, compute="auto")
    lora = LoraLayer(base, R_LORA)
    x = torch.randn(n, fan_in, requires_grad=True)
    gy = torch.randn(n, out)
    xd, k, a = x.detach(), factors.k, r + R_LORA
    W, Vh, Ut = base.weight, salt.Vh, salt.Ut
    h = torch.randn(n, k)
    ur_d = Ut[:r].T * torch.rand(r)  # U_r diag(δ)
    G = torch.randn(out, fan_in)
    R, L, g = torch.randn(a, fan_in), torch.randn(out, a), torch.randn(n, a)
    gq = g[:, r:]
    m = k - r
    Xt, Yr, gLx, gRy = (
        torch.randn(R_LORA, m),
        torch.randn(R_LORA, m),
        torch.randn(R_LORA, out),
        torch.randn(R_LORA, fan_in),
    )
    A4, B4, g4 = torch.randn(R_LORA, fan_in), torch.randn(out, R_LORA), torch.randn(n, R_LORA)
    fns: dict[str, Callable[[], object]] = {
        "layer_plain": _fwd_bwd(base, x, gy),
        "layer_lora": _fwd_bwd(lora, x, gy),
        "layer_salt": _fwd_bwd(salt, x, gy),
        # frozen layer: forward and input gradient
        "x_W": lambda: xd @ W.T,
        "gy_W": lambda: gy @ W,
        # svd_basis: into the basis and out, both ways (no weight gradient; δ's gradient is elementwise)
        "x_V": lambda: xd @ Vh.T,
        "g_U": lambda: h @ Ut,
        "gy_U": lambda: gy @ Ut.T,
        "gh_V": lambda: h @ Vh,
        # dense: rebuild U_r diag(δ) V_rᵀ, weight gradient gyᵀx, δ's gradient diag(U_rᵀ G V_r) via G V_r
        "build": lambda: ur_d @ Vh[:r],
        "wgrad": lambda: gy.T @ xd,
        "dgrad": lambda: G @ Vh[:r].T,
        # factored: r + r_lora columns each way, the r_lora-row weight gradients
        "x_R": lambda: xd @ R.T,
        "g_L": lambda: g @ L.T,
        "gy_L": lambda: gy @ L,
        "gh_R": lambda: g @ R,
        "grad_L": lambda: gq.T @ gy,
        "grad_R": lambda: gq.T @ xd,
        # factored: the residual factors U_res X and Y V_resᵀ, and their gradients to X and Y
        "prep_L": lambda: Xt @ Ut[r:],
        "prep_R": lambda: Yr @ Vh[r:],
        "prep_grad_X": lambda: gLx @ Ut[r:].T,
        "prep_grad_Y": lambda: gRy @ Vh[r:].T,
        # LoRA r4's own products
        "x_A": lambda: xd @ A4.T,
        "g_B": lambda: g4 @ B4.T,
        "gy_B": lambda: gy @ B4,
        "g_A": lambda: g4 @ A4,
        "grad_B": lambda: g4.T @ gy,
        "grad_A": lambda: g4.T @ xd,
    }
    med = _median_interleaved(fns, repeats)  # type: ignore[arg-type]
    ms = {key: 1000 * v for key, v in med.items()}
    frozen = ms["x_W"] + ms["gy_W"]
    forms = {
        "svd_basis": ms["x_V"] + ms["g_U"] + ms["gy_U"] + ms["gh_V"],
        "dense": ms["build"] + frozen + ms["wgrad"] + ms["dgrad"],
        "factored": frozen
        + sum(
            ms[p]
            for p in (
                "x_R",
                "g_L",
                "gy_L",
                "gh_R",
                "grad_L",
                "grad_R",
                "prep_L",
                "prep_R",
                "prep_grad_X",
                "prep_grad_Y",
            )
        ),
    }
    with torch.enable_grad():
        picked = salt.compute_mode(x)
    return {
        **ms,
        **{f"floor_{key}": v for key, v in forms.items()},
        "floor_salt": min(forms.values()),
        "floor_form": min(forms, key=forms.__getitem__),  # type: ignore[dict-item]
        "floor_plain": frozen,
        "floor_lora": frozen + sum(ms[p] for p in ("x_A", "g_B", "gy_B", "g_A", "grad_B", "grad_A")),
        "salt_picks": picked,
    }


def bench_floor(variant: str, image_size: int, batch: int, repeats: int) -> dict:
    """Per adapted linear of the encoder (at the token counts it sees): measured layer times and the matrix
    products of SALT's cheapest exact form, summed over the encoder against LoRA r4 on qkv (other linears frozen)."""
    counts = _encoder_linear_tokens(variant, image_size, batch)
    rows = []
    for (kind, fan_in, out, n), count in sorted(counts.items()):
        parts = _floor_parts(fan_in, out, RELEASED[kind], n, repeats)
        rows.append(
            {
                "layer": kind,
                "in": fan_in,
                "out": out,
                "r": RELEASED[kind],
                "tokens": n,
                "count": count,
                **parts,
            }
        )
        print(json.dumps(rows[-1]), flush=True) if _VERBOSE else None

    def total(fn: Callable[[dict], float]) -> float:
        return sum(row["count"] * fn(row) for row in rows) / 1000

    return {
        "rows": rows,
        # seconds per step summed over the encoder's adapted linears (forward + backward)
        "lora_config_layers_s": total(lambda r: r["layer_lora"] if r["layer"] == "qkv" else r["layer_plain"]),
        "salt_layers_s": total(lambda r: r["layer_salt"]),
        "salt_floor_s": total(lambda r: r["floor_salt"]),
        "plain_layers_s": total(lambda r: r["layer_plain"]),
    }


def bench_layer_floor(tokens: list[int], repeats: int, ranks: list[int]) -> list[dict]:
    """The per-layer table's cells at ``r ≤ 64``: SALT / LoRA measured, and the best ratio SALT's products
    allow (its cheapest exact form's products over LoRA's measured layer, and over LoRA's own products)."""
    rows = []
    for shape_name, (fan_in, out) in SHAPES.items():
        for r in ranks:
            for n in tokens:
                parts = _floor_parts(fan_in, out, r, n, repeats)
                row = {
                    "layer": shape_name,
                    "in": fan_in,
                    "out": out,
                    "r": r,
                    "tokens": n,
                    "salt_vs_lora": parts["layer_salt"] / parts["layer_lora"],
                    "floor_vs_lora": parts["floor_salt"] / parts["layer_lora"],
                    "floor_vs_lora_floor": parts["floor_salt"] / parts["floor_lora"],
                    **parts,
                }
                rows.append(row)
                print(json.dumps(row), flush=True) if _VERBOSE else None
    return rows


def floor_summary(floor: dict, encoder: dict | None) -> dict:
    """The best SALT / LoRA step ratio the floor allows: LoRA's measured step with its linears' measured time
    replaced by SALT's floor (and, as a check, by SALT's measured layer times)."""
    out = {
        "salt_layers_minus_lora_s": floor["salt_layers_s"] - floor["lora_config_layers_s"],
        "floor_minus_lora_s": floor["salt_floor_s"] - floor["lora_config_layers_s"],
    }
    if encoder is not None:
        lora = encoder["train_step_s"]["lora_qkv"]
        out["lora_step_s"] = lora
        out["salt_step_s"] = encoder["train_step_s"]["salt"]
        out["measured_ratio"] = out["salt_step_s"] / lora
        out["predicted_ratio_from_layers"] = (lora + out["salt_layers_minus_lora_s"]) / lora
        out["floor_ratio"] = (lora + out["floor_minus_lora_s"]) / lora
    return out


_VERBOSE = False


def main() -> None:
    global _VERBOSE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part",
        choices=["layers", "encoder", "merged", "floor", "layer-floor", "ratios", "all"],
        default="all",
    )
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per layer cell")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--ranks", nargs="+", default=["8", "64", "released"])
    ap.add_argument("--encoder-repeats", type=int, default=3)
    ap.add_argument(
        "--inference-repeats", type=int, default=11, help="ABBA rounds of merged vs plain inference"
    )
    ap.add_argument(
        "--floor-repeats", type=int, default=9, help="interleaved rounds per layer in --part floor"
    )
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
    if args.part in ("encoder", "ratios", "all"):
        result["encoder"] = bench_encoder(
            args.variant, args.image_size, args.batch, args.encoder_repeats, args.inference_repeats
        )
    if args.part == "merged":
        result["merged"] = bench_merged(args.variant, args.image_size, args.batch, args.inference_repeats)
    if args.part == "layer-floor":
        ranks = [int(r) for r in args.ranks if r != "released" and int(r) <= 64]
        result["layer_floor"] = bench_layer_floor(args.tokens, args.floor_repeats, ranks)
    if args.part in ("floor", "ratios", "all"):
        result["floor"] = bench_floor(args.variant, args.image_size, args.batch, args.floor_repeats)
        result["floor_summary"] = floor_summary(result["floor"], result.get("encoder"))
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
        print(
            f"  merged wrapper dispatch {e['merged_wrapper_overhead_us_per_call']:.1f} us x {e['merged_wrappers']} "
            f"= {100 * e['merged_wrapper_overhead_fraction']:.3f} % of the plain pass"
        )
    if "merged" in result:
        m = result["merged"]
        print(
            f"merged inference / plain = {m['merged_vs_plain']:.4f} ({m['inference_s']['salt_merged']:.3f} s vs "
            f"{m['inference_s']['plain']:.3f} s); merged wrapper dispatch "
            f"{m['merged_wrapper_overhead_us_per_call']:.2f} us x {m['merged_wrappers']} "
            f"= {100 * m['merged_wrapper_overhead_fraction']:.4f} % of the plain pass"
        )
    if "layer_floor" in result:
        print(
            "| layer | r | tokens | salt | lora | salt / lora | salt floor (form) | floor / lora | floor / lora floor |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in result["layer_floor"]:
            print(
                f"| {r['layer']} {r['in']}→{r['out']} | {r['r']} | {r['tokens']} | {r['layer_salt']:.1f} | "
                f"{r['layer_lora']:.1f} | {r['salt_vs_lora']:.2f} | {r['floor_salt']:.1f} ({r['floor_form']}) | "
                f"{r['floor_vs_lora']:.2f} | {r['floor_vs_lora_floor']:.2f} |"
            )
    if "floor" in result:
        print(
            "| layer | tokens | count | plain | lora | salt (form) | salt floor (form) | svd_basis | dense | factored |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in result["floor"]["rows"]:
            print(
                f"| {r['layer']} {r['in']}→{r['out']} r={r['r']} | {r['tokens']} | {r['count']} | "
                f"{r['layer_plain']:.1f} | {r['layer_lora']:.1f} | {r['layer_salt']:.1f} ({r['salt_picks']}) | "
                f"{r['floor_salt']:.1f} ({r['floor_form']}) | {r['floor_svd_basis']:.1f} | {r['floor_dense']:.1f} | "
                f"{r['floor_factored']:.1f} |"
            )
        print(json.dumps(result["floor_summary"], indent=1))


if __name__ == "__main__":
    main()
