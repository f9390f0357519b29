"""Cost of the full-resolution mask branch, measured side by side (issue 13, item 1).

Two ``tiny`` models at 256 px, identical except that one has the branch (latency does not depend on the weights,
so both are random), interleaved repeat after repeat in one process:

* **click**: one positive point on a cached slice through :class:`~salt_seg.model.predictor.Predictor` (decode,
  logits to the 512 x 512 slice, sigmoid) -- the model part of the viewer's click;
* **embed**: one slice through the image encoder (plus the branch's per-image features);
* **volume**: ``segment_volume`` prompt-free with 3 class tokens on a 512 x 512 x ``--slices`` volume
  (slices/s, the throughput of ``salt-seg predict``).

    .venv/bin/python bench/bench_hires.py --repeats 5 --json bench_hires.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch


def _models():
    from salt_seg.model import build_model

    torch.manual_seed(0)
    plain = build_model("tiny", image_size=256, num_classes=3)
    torch.manual_seed(0)
    hires = build_model("tiny", image_size=256, num_classes=3, hires=True)
    return {"sam_64": plain.eval(), "hires_256": hires.eval()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    ap.add_argument("--clicks", type=int, default=20, help="clicks per repeat (default 20)")
    ap.add_argument("--slices", type=int, default=24, help="slices of the volume (default 24)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from salt_seg.data import Volume, prepare_volume
    from salt_seg.inference import segment_volume
    from salt_seg.model.predictor import Predictor
    from salt_seg.preprocessing import Preprocessing
    from salt_seg.prompts import Prompt

    record = Preprocessing(intensity="minmax", image_size=256, classes={1: "a", 2: "b", 3: "c"})
    rng = np.random.default_rng(0)
    slice_2d = rng.random((512, 512)).astype(np.float32)
    vol = Volume(rng.random((512, 512, args.slices)).astype(np.float32), np.diag([0.5, 0.5, 1.0, 1.0]))
    prepared = prepare_volume(vol, record)
    models = _models()
    times: dict[str, dict[str, list[float]]] = {
        n: {"click_ms": [], "embed_ms": [], "slices_s": []} for n in models
    }
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, model in models.items():
                pred = Predictor(model, record)
                t = time.perf_counter()
                pred.set_image(slice_2d, "s", (0.0, 1.0))
                times[name]["embed_ms"].append(1000 * (time.perf_counter() - t))
                clicks = []
                for c in range(args.clicks):
                    t = time.perf_counter()
                    pred.predict(Prompt(points=[(100.0 + 10 * c, 200.0)], point_labels=[1]))
                    clicks.append(1000 * (time.perf_counter() - t))
                times[name]["click_ms"].append(statistics.median(clicks))
                t = time.perf_counter()
                segment_volume(model, record, prepared, mode="auto", batch_size=8)
                times[name]["slices_s"].append(args.slices / (time.perf_counter() - t))
    out = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}
    a, b = out["sam_64"], out["hires_256"]
    ratios = {
        "click": b["click_ms"] / a["click_ms"],
        "embed": b["embed_ms"] / a["embed_ms"],
        "volume_time": a["slices_s"] / b["slices_s"],
    }
    print(f"{'model':10s} {'click ms':>9s} {'embed ms':>9s} {'slices/s':>9s}")
    for n, r in out.items():
        print(f"{n:10s} {r['click_ms']:9.1f} {r['embed_ms']:9.1f} {r['slices_s']:9.2f}")
    print("ratios (branch / none): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"medians": out, "ratios": ratios, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
