"""Click -> overlay latency of the viewer measured in the browser (issue 20, acceptance 3).

Headless Chromium (Debian ``/usr/bin/chromium`` driven by pip's ``playwright``) opens the viewer at 1400 x 1000,
uploads a CT phantom and clicks positive points on the viewed slice. One sample is the time, in the page's own
clock (``performance.now()``), from the ``pointerdown`` on the image to the moment the new overlay picture has
been loaded and decoded by the browser: the whole round trip a user waits for (the event through Gradio's queue,
the prompt decode, the overlay drawn and PNG-encoded, the picture fetched and decoded). The slice is embedded by
the background prefetcher before the clicks (the viewer's normal case), as in ``bench/bench_viewer.py``.

The model is the built-in base when it is installed, else a randomly initialised ``tiny`` at 128 px (latency does
not depend on the weights); the output says which. CPU, one torch thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_viewer_browser.py --clicks 25 --json bench_viewer_browser.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHROMIUM = "/usr/bin/chromium"
#: records pointerdown -> new picture decoded, per click, into window.__latency (milliseconds).
PROBE = """
() => {
  window.__latency = [];
  let t0 = null;
  const root = document.querySelector('#viewer-image');
  root.addEventListener('pointerdown', () => { t0 = performance.now(); }, true);
  new MutationObserver(async (records) => {
    for (const r of records) {
      const img = r.target;
      if (t0 === null || img.tagName !== 'IMG' || r.attributeName !== 'src') continue;
      const start = t0;
      t0 = null;
      try { await img.decode(); } catch (e) {}
      window.__latency.push(performance.now() - start);
    }
  }).observe(root, { attributes: true, subtree: true, attributeFilter: ['src'] });
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clicks", type=int, default=25, help="clicks measured (default 25), after 3 warm-up clicks"
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_viewer import add_phantom_args

    add_phantom_args(parser, slices=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from bench_viewer import ct_phantom, load_model
    from playwright.sync_api import sync_playwright

    from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
    from salt_seg_apps.viewer.engine import ModelRegistry

    loaded, model_name = load_model()
    work = Path(tempfile.mkdtemp(prefix="bench-viewer-browser-"))
    import nibabel as nib

    volume = ct_phantom(args.side, args.slices)
    path = work / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(volume.array[0].round().astype(np.int16), volume.affine), str(path))
    app = ViewerApp(ViewerConfig(max_upload_mb=512), ModelRegistry({"model": lambda: loaded}))
    app.launch(prevent_thread_lock=True)
    samples: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(app.demo.local_url)
            page.locator("#viewer-upload input[type=file]").set_input_files(str(path))
            page.wait_for_function(
                "() => document.querySelector('#viewer-status').innerText.includes('opened')", timeout=600_000
            )
            (session,) = app.sessions.sessions()
            assert session.engine is not None and session.engine.prefetcher.wait_idle(600)
            page.evaluate(PROBE)
            img = page.locator("#viewer-image img")
            geo = session.geometry()
            rng = np.random.default_rng(0)
            for n in range(args.clicks + 3):
                # on the organ (patient left is screen right), a slightly different pixel each time
                px = getattr(geo, "margin", 0) + geo.width * (0.40 + rng.uniform(-0.03, 0.03))
                py = getattr(geo, "margin", 0) + geo.height * (0.50 + rng.uniform(-0.05, 0.05))
                box = img.bounding_box()
                nw, nh = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                s = min(box["width"] / nw, box["height"] / nh, 1.0)
                x = box["x"] + (box["width"] - nw * s) / 2 + px * s
                y = box["y"] + (box["height"] - nh * s) / 2 + py * s
                page.mouse.click(x, y)
                page.wait_for_function("(n) => window.__latency.length > n", arg=n, timeout=600_000)
                page.wait_for_function(
                    "() => document.querySelector('#viewer-status').innerText.includes('predicted IoU')"
                )
                page.wait_for_timeout(150)  # let the page settle; the next click is a fresh one
            samples = page.evaluate("window.__latency")[3:]
            browser.close()
    finally:
        app.close()
    q = statistics.quantiles(samples, n=10)
    result: dict[str, Any] = {
        "model": model_name,
        "volume": f"{args.side} x {args.side} x {args.slices} voxels, 0.7 x 0.7 x 2.5 mm (CT phantom)",
        "clicks": len(samples),
        "median_ms": round(statistics.median(samples), 1),
        "p10_ms": round(q[0], 1),
        "p90_ms": round(q[8], 1),
        "min_ms": round(min(samples), 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(
            json.dumps({**result, "samples_ms": [round(t, 1) for t in samples]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
