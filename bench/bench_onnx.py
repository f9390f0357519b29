"""Benchmark ONNX Runtime against eager PyTorch (issue 16, item 3): mask difference, slices/s, click latency.

For each model: export it (:func:`salt_seg.inference.onnx_model.export_onnx`, adapter merged), then on a synthetic
``--side`` x ``--side`` x ``--slices`` volume

* **slices/s**: :func:`salt_seg.inference.segment_volume` over every slice (``prompts`` mode, one box per slice,
  plus the class tokens when the model has them), eager PyTorch (:class:`~salt_seg.inference.ModelBackend`, merged
  weights, fp32, inference mode) against ONNX Runtime (:class:`~salt_seg.inference.onnx_model.OnnxBackend`);
* **click ms**: one point prompt on an already embedded slice, :class:`~salt_seg.model.predictor.Predictor`
  against :class:`~salt_seg.inference.onnx_model.OnnxPredictor` (prompt encoder + decoder + resize + sigmoid);
* **max |prob| diff** and the fraction of equal label-map voxels between the two.

Repeats alternate in ABBA order (eager, ORT, ORT, eager, ...) and the medians are compared in the same run; one
thread on both sides by default. Models: ``builtin`` (the shipped tiny base with the full-resolution branch),
``small`` (the small variant at 256 px with the branch and two class tokens, random weights: speed does not depend
on them) and any run directory given with ``--model``.

    .venv/bin/python bench/bench_onnx.py --json bench_onnx.json
    .venv/bin/python bench/bench_onnx.py --models builtin --model runs/salt --slices 48
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_seg.io import atomic_write_json


def load(name: str):  # -> LoadedModel
    from salt_seg.inference import LoadedModel, load_base_for_prompts, load_inference_model
    from salt_seg.model import build_model
    from salt_seg.preprocessing import Preprocessing

    if name == "builtin":
        model, record = load_base_for_prompts("builtin")
        return LoadedModel(model, record, dict(record.classes), {"merged": True})
    if name in ("tiny", "small"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(name, image_size=256, num_classes=2, hires=True)
        model.requires_grad_(False)
        record = Preprocessing(
            intensity="minmax", image_size=256, classes={1: "a", 2: "b"}, prompt_mode="mixed"
        )
        return LoadedModel(model.eval(), record, {1: "a", 2: "b"}, {"merged": True})
    return load_inference_model(name)


def volume(side: int, slices: int):
    from salt_seg.data import Volume

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    plane = np.exp(-(((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.04))
    image = plane[..., None] * np.linspace(0.6, 1.0, slices) + 0.1 * rng.normal(size=(side, side, slices))
    return Volume(image.astype(np.float32), np.diag([0.8, 0.8, 1.5, 1.0]))


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from salt_seg.data import prepare_volume
    from salt_seg.inference import segment_volume
    from salt_seg.inference.onnx_model import OnnxModel, OnnxPredictor, export_onnx
    from salt_seg.model.predictor import Predictor
    from salt_seg.prompts import Prompt

    loaded = load(name)
    model, record = loaded.model, loaded.record
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        info = export_onnx(loaded, tmp)
        export_s = time.perf_counter() - t
        ort_model = OnnxModel(tmp, threads=torch.get_num_threads())
        sizes = {f: (Path(tmp) / f).stat().st_size for f in ("encoder.onnx", "decoder.onnx")}
        prepared = prepare_volume(volume(args.side, args.slices), record)
        s = args.side
        box = (0.3 * s, 0.25 * s, 0.7 * s, 0.65 * s)
        prompts = [Prompt(box=box, class_id=1, slice_index=i) for i in range(prepared.n_slices)]
        prompts += [
            Prompt(class_id=c, slice_index=i)
            for i in range(prepared.n_slices)
            for c in range(1, model.num_classes + 1)
        ]
        names = {c: str(c) for c in range(1, max(1, model.num_classes) + 1)}
        kw = dict(mode="prompts", batch_size=args.batch_size, probabilities=True, class_names=names)
        backends = {"eager": model, "ort": ort_model}
        results = {
            k: segment_volume(m, record, prepared, prompts, **kw) for k, m in backends.items()
        }  # warm-up
        diff = float(np.abs(results["ort"].probabilities - results["eager"].probabilities).max())
        agree = float((results["ort"].label_map == results["eager"].label_map).mean())
        vol_t: dict[str, list[float]] = {k: [] for k in backends}
        order = list(backends)
        for r in range(args.repeats):
            for k in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                segment_volume(backends[k], record, prepared, prompts, **kw)
                vol_t[k].append(time.perf_counter() - t)
        # clicks on one embedded slice
        preds = {"eager": Predictor(model, record), "ort": OnnxPredictor(ort_model)}
        image = prepared.slice_image(prepared.n_slices // 2)[0]
        for p in preds.values():
            p.set_image(image, "k", (0.0, 1.0))
        click = Prompt(points=[(0.5 * s, 0.45 * s)], point_labels=[1])
        click_t: dict[str, list[float]] = {k: [] for k in preds}
        for r in range(args.clicks):
            for k in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                preds[k].predict(click)
                click_t[k].append(time.perf_counter() - t)
        click_diff = float(
            np.abs(
                preds["ort"].predict(click).probabilities - preds["eager"].predict(click).probabilities
            ).max()
        )
    n = prepared.n_slices
    med = {k: statistics.median(v) for k, v in vol_t.items()}
    cmed = {k: 1000 * statistics.median(v) for k, v in click_t.items()}
    return {
        "model": name,
        "variant": model.variant,
        "hires": model.hires is not None,
        "class_tokens": model.num_classes,
        "export_s": round(export_s, 1),
        "onnx_mb": {k: round(v / 2**20, 1) for k, v in sizes.items()},
        "export_check": info["check"],
        "volume_max_abs_prob_diff": diff,
        "volume_label_agreement": agree,
        "click_max_abs_prob_diff": click_diff,
        "prompts_per_slice": len(prompts) // n,
        "slices_per_s": {k: round(n / v, 2) for k, v in med.items()},
        "volume_speedup_ort": round(med["eager"] / med["ort"], 3),
        "volume_seconds_all": {k: [round(t, 3) for t in v] for k, v in vol_t.items()},
        "click_ms": {k: round(v, 2) for k, v in cmed.items()},
        "click_speedup_ort": round(cmed["eager"] / cmed["ort"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["builtin", "small"], help="builtin, tiny, small")
    p.add_argument("--model", action="append", default=[], help="also a run directory (repeatable)")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--side", type=int, default=256, help="slice side in voxels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4, help="volume passes per backend (ABBA)")
    p.add_argument("--clicks", type=int, default=30, help="clicks per backend (ABBA)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    rows = [bench_model(name, args) for name in [*args.models, *args.model]]
    result = {
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "volume": [args.side, args.side, args.slices],
        "batch_size": args.batch_size,
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
