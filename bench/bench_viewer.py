"""Benchmark the viewer's click -> overlay latency (issue 8, acceptance 4).

One click is the whole server-side path of a positive point: the handler maps the display pixel to the slice,
decodes the prompt (embedding the slice first when it is not cached), writes the mask into the label map, renders
the overlay, and Gradio's own postprocessing encodes it as PNG into its cache (what the page then loads). Two cases, interleaved click after click:

* **cached** -- the slice was embedded in the background beforehand (the viewer's normal case: the viewed slice
  and its neighbours are precomputed while the user looks);
* **uncached** -- a slice never seen before, embedded inside the click (background prefetching off).

The model is the built-in base (256 px) when it is installed, else a randomly initialised ``tiny`` at 128 px (latency does
not depend on the weights); the output says which. CPU, one torch thread unless ``--threads``.

    .venv/bin/python bench/bench_viewer.py --clicks 30 --json bench_viewer.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_seg.io import atomic_write_json


def load_model() -> tuple[Any, str]:
    """The built-in base, or a random ``tiny`` at 128 px when the base is not installed."""
    from salt_seg.inference.loading import LoadedModel
    from salt_seg.model.variants import build_model
    from salt_seg_apps.viewer.engine import load_builtin

    try:
        loaded = load_builtin("cpu")
        return loaded, f"built-in base ({loaded.model.variant}, {loaded.model.image_size} px)"
    except FileNotFoundError:
        torch.manual_seed(0)
        model = build_model("tiny", image_size=128).eval()
        return LoadedModel(model, None, {}, {}), "random tiny @ 128 px (built-in base not installed)"  # type: ignore[arg-type]


def ct_phantom(side: int, slices: int) -> Any:
    """A CT-like volume: air, a 0 HU body and a 60 HU ellipsoidal organ, 0.7 x 0.7 x 2.5 mm."""
    from salt_seg.data import Volume

    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in (side, side, slices)], indexing="ij")
    arr = np.full((side, side, slices), -1000.0, dtype=np.float32)
    arr[i**2 + j**2 < 0.8] = 0.0
    arr[((i - 0.2) / 0.3) ** 2 + (j / 0.25) ** 2 + (k / 0.7) ** 2 < 1] = 60.0
    arr += np.random.default_rng(0).normal(0, 10, arr.shape).astype(np.float32)
    return Volume(arr, np.diag([0.7, 0.7, 2.5, 1.0]), modality="CT", name="phantom")


def one_click(session: Any, px: int, py: int, cache_dir: str) -> tuple[float, float, int]:
    """Wall and CPU seconds from the click to the PNG file Gradio serves; and the mask size."""
    from gradio.processing_utils import save_img_array_to_cache

    from salt_seg_apps.viewer import handlers as h

    t0, c0 = time.perf_counter(), time.process_time()
    out = h.on_click_xy(session, px, py)
    save_img_array_to_cache(out["image"], cache_dir, format="png")  # exactly Gradio's postprocess of gr.Image
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if out["status"].startswith("⚠️"):
        raise RuntimeError(out["status"])
    return dt, dc, int(session.label_slice().astype(bool).sum())


def add_phantom_args(parser: argparse.ArgumentParser, slices: int) -> None:
    """The CT phantom's size and the JSON output: the options every viewer benchmark shares."""
    parser.add_argument("--side", type=int, default=512, help="slice side in voxels (default 512)")
    parser.add_argument("--slices", type=int, default=slices, help=f"slices in the volume (default {slices})")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=30, help="clicks per case (default 30)")
    add_phantom_args(parser, slices=80)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from salt_seg_apps.viewer.engine import ModelRegistry
    from salt_seg_apps.viewer.session import ViewerSession

    loaded, model_name = load_model()
    registry = ModelRegistry({"model": lambda: loaded})
    volume = ct_phantom(args.side, args.slices)
    work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    cached = ViewerSession(registry, work / "cached", radius=1, cache_size=64)
    fresh = ViewerSession(registry, work / "fresh", radius=0, cache_size=64)
    t0 = time.perf_counter()
    cached.open(volume)
    open_s = time.perf_counter() - t0
    fresh.open(volume)
    geo = cached.geometry()
    px, py = int(geo.width * 0.4), int(geo.height * 0.5)  # on the organ (patient left is screen right)
    usable = [i for i in range(args.slices) if abs(i - args.slices // 2) < args.slices * 0.3]
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    cpu: dict[str, list[float]] = {"cached": [], "uncached": []}
    cache_dir = str(work / "gradio_cache")
    areas: list[int] = []
    embed: list[float] = []
    for n in range(args.clicks):
        index = usable[n % len(usable)]
        # cached: the viewer embedded the slice in the background when it was shown
        cached.set_slice(index)
        assert cached.engine is not None and cached.engine.prefetcher.wait_idle(120)
        assert cached.engine.is_cached(2, index)
        dt, dc, area = one_click(cached, px, py, cache_dir)
        times["cached"].append(dt)
        cpu["cached"].append(dc)
        areas.append(area)
        cached.undo()
        # uncached: a slice the session never embedded
        assert fresh.engine is not None
        fresh.engine.predictor.clear()
        fresh.set_slice(index)
        t1 = time.perf_counter()
        fresh.engine.ensure(2, index)
        embed.append(time.perf_counter() - t1)
        fresh.engine.predictor.clear()
        dt, dc, _ = one_click(fresh, px, py, cache_dir)
        times["uncached"].append(dt)
        cpu["uncached"].append(dc)
        fresh.undo()
    cached.close()
    fresh.close()

    def summary(xs: list[float]) -> dict[str, float]:
        q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
        return {"median_ms": round(1000 * statistics.median(xs), 1), "p90_ms": round(1000 * q[8], 1)}

    result = {
        "model": model_name,
        "volume": f"{args.side} x {args.side} x {args.slices} voxels, 0.7 x 0.7 x 2.5 mm (CT phantom)",
        "display": f"{geo.width} x {geo.height} px",
        "threads": args.threads,
        "clicks": args.clicks,
        "open_volume_s": round(open_s, 2),
        "cached": {
            **summary(times["cached"]),
            "cpu_median_ms": round(1000 * statistics.median(cpu["cached"]), 1),
        },
        "uncached": {
            **summary(times["uncached"]),
            "cpu_median_ms": round(1000 * statistics.median(cpu["uncached"]), 1),
        },
        "embedding_only": summary(embed),
        "median_mask_px": int(statistics.median(areas)),
        "torch": torch.__version__,
    }
    print(f"model: {model_name}; {result['volume']}; display {result['display']}; {args.threads} thread(s)")
    print("| case | median wall (ms) | p90 wall (ms) | median CPU (ms) |\n|---|---|---|---|")
    for case in ("cached", "uncached", "embedding_only"):
        r = result[case]
        print(f"| {case} | {r['median_ms']} | {r['p90_ms']} | {r.get('cpu_median_ms', '')} |")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
