"""Viewer click latency on eager PyTorch against ONNX Runtime (``salt-seg app --backend onnx``; issue 16, item 3).

The click is ``bench/bench_viewer.py``'s: the whole server-side path of a positive point (display pixel -> slice
pixel, prompt decode, mask into the label map, overlay drawn, Gradio's PNG postprocessing). The model is the
built-in base (as there), exported once with :func:`salt_seg.inference.onnx_model.export_onnx`; both sessions get the
same record (the base's CT record), so they differ only in the backend. Two cases per backend:

* **cached** -- the slice was embedded beforehand (the viewer's normal case: the prefetcher did it);
* **uncached** -- the slice is embedded inside the click.

Rounds alternate in ABBA order (torch, onnx, onnx, torch, ...), one thread on both sides; the output gives medians,
their ratio and the largest probability difference of the clicked masks.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_viewer_backends.py --clicks 30 --json bench_viewer_backends.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from salt_seg.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=30, help="clicks per backend and case (default 30)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_viewer import add_phantom_args

    add_phantom_args(parser, slices=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime
    from bench_viewer import ct_phantom, load_model, one_click

    from salt_seg.inference.loading import LoadedModel
    from salt_seg.inference.onnx_model import export_onnx
    from salt_seg_apps.viewer.engine import ModelRegistry, base_record, load_exported
    from salt_seg_apps.viewer.session import ViewerSession

    base, model_name = load_model()
    record = base_record("CT", base.model.image_size)
    loaded = LoadedModel(base.model, record, {}, {"merged": True})
    work = Path(tempfile.mkdtemp(prefix="bench-viewer-backends-"))
    t0 = time.perf_counter()
    info = export_onnx(loaded, work / "onnx")
    export_s = time.perf_counter() - t0
    ort_loaded = load_exported(str(work / "onnx"), threads=1)
    registries = {
        "torch": ModelRegistry({"m": lambda: loaded}),
        "onnx": ModelRegistry({"m": lambda: ort_loaded}),
    }
    volume = ct_phantom(args.side, args.slices)
    sessions = {}
    for b, reg in registries.items():
        sessions[b] = (
            ViewerSession(reg, work / f"{b}-cached", radius=0, cache_size=64),
            ViewerSession(reg, work / f"{b}-fresh", radius=0, cache_size=64),
        )
        for s in sessions[b]:
            s.open(volume)
    geo = sessions["torch"][0].geometry()
    px, py = int(geo.width * 0.4), int(geo.height * 0.5)  # on the organ
    usable = [i for i in range(args.slices) if abs(i - args.slices // 2) < args.slices * 0.3]
    cache_dir = str(work / "gradio_cache")
    times: dict[str, dict[str, list[float]]] = {b: {"cached": [], "uncached": []} for b in sessions}
    cpu: dict[str, dict[str, list[float]]] = {b: {"cached": [], "uncached": []} for b in sessions}
    diffs: list[float] = []
    agree: list[float] = []
    order = list(sessions)
    for n in range(args.clicks):
        index = usable[n % len(usable)]
        probs = {}
        for b in order if n % 2 == 0 else order[::-1]:
            cached, fresh = sessions[b]
            cached.set_slice(index)
            assert cached.engine is not None
            cached.engine.ensure(2, index)  # what the prefetcher does while the user looks
            dt, dc, _ = one_click(cached, px, py, cache_dir)
            times[b]["cached"].append(dt)
            cpu[b]["cached"].append(dc)
            probs[b] = cached.label_slice() > 0
            clicked = cached.prompts.get(2, index, cached.label_set.active)
            cached.undo()
            assert fresh.engine is not None
            fresh.engine.predictor.clear()
            fresh.set_slice(index)
            dt, dc, _ = one_click(fresh, px, py, cache_dir)
            times[b]["uncached"].append(dt)
            cpu[b]["uncached"].append(dc)
            fresh.undo()
        agree.append(float((probs["torch"] == probs["onnx"]).mean()))
        # the clicked prompt's probabilities, decoded by both engines
        outs = {b: sessions[b][0].engine.decode(2, [(index, clicked)])[0].probabilities for b in order}
        diffs.append(float(np.abs(outs["torch"] - outs["onnx"]).max()))
    for pair in sessions.values():
        for s in pair:
            s.close()

    def med(xs: list[float]) -> float:
        return round(1000 * statistics.median(xs), 1)

    result = {
        "model": model_name,
        "volume": f"{args.side} x {args.side} x {args.slices} voxels, 0.7 x 0.7 x 2.5 mm (CT phantom)",
        "display": f"{geo.width} x {geo.height} px",
        "clicks": args.clicks,
        "threads": 1,
        "export_s": round(export_s, 1),
        "export_check": info["check"],
        "median_ms": {b: {c: med(v) for c, v in t.items()} for b, t in times.items()},
        "p90_ms": {
            b: {c: round(1000 * statistics.quantiles(v, n=10)[8], 1) for c, v in t.items()}
            for b, t in times.items()
        },
        "cpu_median_ms": {b: {c: med(v) for c, v in t.items()} for b, t in cpu.items()},
        "onnx_speedup": {
            c: round(statistics.median(times["torch"][c]) / statistics.median(times["onnx"][c]), 3)
            for c in ("cached", "uncached")
        },
        "onnx_cpu_speedup": {
            c: round(statistics.median(cpu["torch"][c]) / statistics.median(cpu["onnx"][c]), 3)
            for c in ("cached", "uncached")
        },
        "click_mask_agreement_min": min(agree),
        "click_max_abs_prob_diff": max(diffs),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    print(
        f"model: {model_name}; {result['volume']}; display {result['display']}; 1 thread; {args.clicks} clicks"
    )
    print(
        "| case | torch wall median (ms) | onnx wall median (ms) | wall speed-up | torch CPU median (ms) | "
        "onnx CPU median (ms) | CPU speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in ("cached", "uncached"):
        m, u = result["median_ms"], result["cpu_median_ms"]
        print(
            f"| {c} | {m['torch'][c]} | {m['onnx'][c]} | {result['onnx_speedup'][c]}x | {u['torch'][c]} | "
            f"{u['onnx'][c]} | {result['onnx_cpu_speedup'][c]}x |"
        )
    print(f"click masks equal: min {min(agree):.4%}; max |prob| diff {result['click_max_abs_prob_diff']}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
