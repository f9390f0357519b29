"""Model-core benchmark: `salt-seg --help` latency and forward time / parameters of the small variants.

Usage: python bench/bench_model.py [--repeats 5] [--json]
Medians of interleaved repeats on this machine's CPU (torch threads as configured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from salt_seg.model import build_model
from salt_seg.model.sam import InputPrompt


def time_help(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "salt_seg", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = {name: build_model(name).eval() for name in ("tiny", "small")}
    x = torch.randn(args.batch, 3, 256, 256)
    prompts = [InputPrompt(box=torch.tensor([30.0, 40.0, 150.0, 200.0]))] * args.batch
    fwd: dict[str, list[float]] = {n: [] for n in models}
    with torch.inference_mode():
        for m in models.values():
            m(x, prompts)  # warm-up
        for _ in range(args.repeats):
            for name, m in models.items():  # interleaved
                t = time.perf_counter()
                m(x, prompts)
                fwd[name].append(time.perf_counter() - t)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "help_seconds": time_help(args.repeats),
        "variants": {
            n: {
                "parameters": sum(p.numel() for p in m.parameters()),
                "encoder_parameters": sum(p.numel() for p in m.image_encoder.parameters()),
                "forward_ms_median": 1000 * statistics.median(fwd[n]),
                "batch": args.batch,
                "image_size": 256,
            }
            for n, m in models.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"salt-seg --help: {result['help_seconds'] * 1000:.0f} ms (median of {args.repeats})")
    print(f"| variant | parameters | encoder | forward (ms, batch {args.batch}, 256²) |")
    print("|---|---|---|---|")
    for n, r in result["variants"].items():
        print(f"| {n} | {r['parameters']:,} | {r['encoder_parameters']:,} | {r['forward_ms_median']:.1f} |")


if __name__ == "__main__":
    main()
