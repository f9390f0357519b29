"""Benchmark ``salt-seg predict``'s engine (issue 7, acceptance 4) and calibrate propagation thresholds.

Throughput: slices/s of :func:`salt_seg.inference.segment_volume` (automatic mode: encoder + class-token decode +
label map) on a synthetic ``--slices``-slice volume of ``--side`` x ``--side`` slices, for each variant, with a SALT
adapter merged into the weights vs. left as wrappers. Repeats are interleaved (variant x merged, repeat after
repeat, in ABBA order) and the median is reported. Random weights: speed does not depend on them.

    .venv/bin/python bench/bench_predict.py --repeats 3 --json bench_predict.json

Calibration: trace unstopped propagations on the generated validation volumes and sweep the stop rules (see
:mod:`salt_seg.inference.calibration`), for the built-in base or any run/adapter:

    .venv/bin/python bench/bench_predict.py --calibrate --checkpoint builtin
    .venv/bin/python bench/bench_predict.py --calibrate --model runs/objectness
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from salt_seg.io import atomic_write_json


def build(variant: str, merged: bool, image_size: int):
    from salt_seg.adapters import AdapterConfig, inject_adapters, merge_adapters
    from salt_seg.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(variant, image_size=image_size, num_classes=1)
        inject_adapters(model, AdapterConfig(name="salt"), svd_cache=False, progress=False)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
    model.requires_grad_(False)
    if merged:
        merge_adapters(model)
    return model.eval()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    from salt_seg.data import Volume, prepare_volume
    from salt_seg.inference import InferenceSettings, segment_volume
    from salt_seg.preprocessing import Preprocessing

    record = Preprocessing(
        intensity="minmax", image_size=args.image_size, classes={1: "organ"}, prompt_mode="auto"
    )
    rng = np.random.default_rng(0)
    image = rng.normal(size=(args.side, args.side, args.slices)).astype(np.float32)
    prepared = prepare_volume(Volume(image, np.diag([0.8, 0.8, 1.5, 1.0])), record)
    settings = InferenceSettings(score_threshold=0.0)
    models = {(v, m): build(v, m, args.image_size) for v in args.variants for m in (False, True)}
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in models}
    for model in models.values():  # warm-up
        segment_volume(
            model, record, prepared, settings=settings, batch_size=args.batch_size, device=args.device
        )
    keys = list(models)
    for r in range(args.repeats):
        for key in keys if r % 2 == 0 else keys[::-1]:  # ABBA order cancels slow drifts of a shared machine
            model = models[key]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            segment_volume(
                model, record, prepared, settings=settings, batch_size=args.batch_size, device=args.device
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t)
    rows = []
    for (v, m), ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "variant": v,
                "weights": "merged" if m else "unmerged",
                "slices": args.slices,
                "seconds_median": round(med, 3),
                "seconds_all": [round(t, 3) for t in ts],
                "slices_per_s": round(args.slices / med, 2),
                "repeats": len(ts),
            }
        )
    return {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "volume": [args.side, args.side, args.slices],
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rows": rows,
    }


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from salt_seg.inference.calibration import (
        GRID,
        VALIDATION_SEEDS,
        slice_dice_by_confidence,
        sweep,
        trace_volume,
    )
    from salt_seg.inference.propagation import PropagationSettings

    if args.model:
        from salt_seg.inference import load_inference_model

        model, record, _, _ = load_inference_model(args.model, device=args.device)
        source = args.model
    else:
        from salt_seg.inference import load_base_for_prompts

        model, record = load_base_for_prompts(args.checkpoint, args.variant, args.device)
        source = args.checkpoint
    seeds = VALIDATION_SEEDS[: args.volumes]
    t = time.perf_counter()
    traces = [trace_volume(model, s, record, batch_size=args.batch_size) for s in seeds]
    rows = sweep(traces)
    best = rows[0]
    chosen = PropagationSettings(
        **{k: v for k, v in best.items() if k in PropagationSettings.__dataclass_fields__ and v is not None}
    )
    none = next(
        r
        for r in rows
        if r["iou_threshold"] == 0
        and r["stability_threshold"] == 0
        and r["min_area_ratio"] == 0
        and r["max_area_ratio"] is None
        and r["min_area_px"] == 1
    )
    return {
        "model": source,
        "volumes": len(seeds),
        "seeds": [seeds[0], seeds[-1]],
        "seconds": round(time.perf_counter() - t, 1),
        "chosen": best,
        "no_stop_rule": none,
        "shipped_defaults": sweep(traces, {k: (getattr(PropagationSettings(), k),) for k in GRID})[0],
        "top": rows[:10],
        "by_stability": slice_dice_by_confidence(traces, chosen, "stability"),
        "by_predicted_iou": slice_dice_by_confidence(traces, chosen, "iou"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["tiny", "small"])
    p.add_argument("--slices", type=int, default=190)
    p.add_argument("--side", type=int, default=256, help="slice side in voxels")
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--calibrate", action="store_true", help="calibrate propagation thresholds instead")
    p.add_argument("--model", help="calibrate a run directory / adapter file")
    p.add_argument("--checkpoint", default="builtin", help="calibrate a base checkpoint (default: builtin)")
    p.add_argument("--variant", default=None, help="variant of --checkpoint (default: detected)")
    p.add_argument("--volumes", type=int, default=30, help="validation volumes for --calibrate")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = calibrate(args) if args.calibrate else throughput(args)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
