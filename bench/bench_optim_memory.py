"""Low-memory full fine-tuning (issue 18): optimizer-state bytes, peak RSS and step time, AdamW vs GaLore vs
Q-GaLore.

Usage::

    python bench/bench_optim_memory.py [--variants tiny vit_b] [--image-size 256] [--batch 1] [--steps 3]
                                       [--rank 128] [--min-dim 64] [--optimizers adamw galore q-galore] [--json]

Every (variant, optimizer) runs in its own subprocess (so that peak RSS is that configuration's alone): a randomly
initialised SAM (``salt_seg.model.build_model``) with every parameter trainable (full fine-tuning of encoder,
prompt encoder and mask decoder), ``--steps`` training steps (forward with one box prompt per image, a squared-logit
loss, backward, step) at ``--batch`` images of ``--image-size`` pixels on CPU, one torch thread.

``--optimizers salt lora`` add those adapters (their default ranks and targets, the mask decoder trained) with AdamW:
what parameter-efficient fine-tuning costs beside full fine-tuning.

Columns: (trainable) parameters; optimizer state = bytes of the tensors in ``optimizer.state`` after the steps (moments,
GaLore projectors, Q-GaLore's INT4 projector codes and INT8 weight copy, step counters); of which the INT8 weight
copy (Q-GaLore keeps each projected matrix as int8 codes and writes the dequantized weight into the fp32
parameter, which stays: the copy is extra memory here); state as % of AdamW's; peak RSS (``ru_maxrss``) and its rise over the RSS
after the model was built; the first step (GaLore: includes the SVD of every projected gradient) and the median
of the later steps (no refresh). The issue's goal: GaLore's optimizer state <= 35 % of AdamW's at the default rank
for ViT-B.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_one(
    variant: str, optimizer: str, image_size: int, batch: int, steps: int, rank: int, min_dim: int
) -> dict:
    import torch

    from salt_seg.model import build_model
    from salt_seg.model.sam import InputPrompt
    from salt_seg.training.galore import GaLoreAdamW, galore_eligible, optimizer_state_bytes
    from salt_seg.training.qgalore import QGaLoreAdamW

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(variant, image_size=image_size)
    model.train().requires_grad_(True)
    if optimizer in ("salt", "lora"):  # a parameter-efficient adapter with AdamW, for scale
        from salt_seg.adapters import AdapterConfig, inject_adapters, trainable_parameters

        inject_adapters(model, AdapterConfig(name=optimizer), svd_cache=False, progress=False)
        params = list(trainable_parameters(model))
    else:
        params = list(model.parameters())
    opt: torch.optim.Optimizer
    if optimizer == "galore":
        opt = GaLoreAdamW(params, lr=1e-4, rank=rank, update_interval=200, scale=0.25, min_dim=min_dim)
    elif optimizer == "q-galore":
        opt = QGaLoreAdamW(params, lr=1e-4, rank=rank, update_interval=200, scale=0.25, min_dim=min_dim)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, image_size, image_size)
    s = float(image_size)
    prompts = [InputPrompt(box=torch.tensor([0.2 * s, 0.25 * s, 0.7 * s, 0.8 * s])) for _ in range(batch)]
    rss_built = _rss_mib()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits, _ = model(x, prompts)
        logits.square().mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "variant": variant,
        "optimizer": optimizer,
        "params": sum(p.numel() for p in params),  # trainable
        "projected_matrices": sum(galore_eligible(p, min_dim) for p in params) if optimizer != "adamw" else 0,
        "state_bytes": optimizer_state_bytes(opt),
        "int8_weight_bytes": sum(
            v.numel() * v.element_size()
            for st in opt.state.values()
            for k, v in st.items()
            if k in ("weight_codes", "weight_scale")
        ),
        "rss_built_mib": rss_built,
        "peak_rss_mib": peak,
        "first_step_s": times[0],
        "later_step_s": statistics.median(times[1:]) if len(times) > 1 else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["tiny", "vit_b"])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--min-dim", type=int, default=64)
    ap.add_argument(
        "--optimizers",
        nargs="+",
        default=["adamw", "galore", "q-galore"],
        choices=["adamw", "galore", "q-galore", "salt", "lora"],
        help="full fine-tuning with each optimizer; salt / lora: that adapter (defaults) with AdamW",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    common = (args.image_size, args.batch, args.steps, args.rank, args.min_dim)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], *common)))
        return
    rows = []
    for variant in args.variants:
        for optimizer in args.optimizers:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                variant,
                optimizer,
                "--image-size",
                str(args.image_size),
            ]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--rank", str(args.rank)]
            cmd += ["--min-dim", str(args.min_dim)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"image {args.image_size} px, batch {args.batch}, {args.steps} steps, GaLore rank {args.rank}, "
        f"min_dim {args.min_dim}, CPU 1 thread"
    )
    print(
        "| variant | optimizer | params (M) | projected | optimizer state (MiB) | of which INT8 weights (MiB) "
        "| % of AdamW | peak RSS (MiB) | RSS rise (MiB) | first step (s) | later steps (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    adamw = {r["variant"]: r["state_bytes"] for r in rows if r["optimizer"] == "adamw"}
    for r in rows:
        pct = f"{100 * r['state_bytes'] / adamw[r['variant']]:.1f} %" if r["variant"] in adamw else "-"
        print(
            f"| {r['variant']} | {r['optimizer']} | {r['params'] / 1e6:.1f} | {r['projected_matrices']} "
            f"| {r['state_bytes'] / 2**20:.1f} | {r['int8_weight_bytes'] / 2**20:.1f} | {pct} "
            f"| {r['peak_rss_mib']:.0f} "
            f"| {r['peak_rss_mib'] - r['rss_built_mib']:.0f} | {r['first_step_s']:.2f} | {r['later_step_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
