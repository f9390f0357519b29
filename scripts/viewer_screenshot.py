"""The README's viewer screenshot (``docs/viewer.png``): the page at 1400 x 1000 in headless Chromium.

Colin27 T1 (``ch2.nii.gz``) with six AAL structures loaded as a label map with its JSON sidecar (names), on the
built-in base; both files come with Debian's ``mricron-data`` package. One positive point is placed, so the
status line and the label panel show what a user sees after a click.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/viewer_screenshot.py --out docs/viewer.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

TEMPLATES = Path("/usr/share/mricron/templates")
STRUCTURES = {
    71: "L caudate",
    72: "R caudate",
    73: "L putamen",
    74: "R putamen",
    77: "L thalamus",
    78: "R thalamus",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/viewer.png", help="where to write the PNG")
    parser.add_argument("--slice", type=int, default=78, help="axial slice shown (default 78)")
    args = parser.parse_args(argv)
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig

    work = Path(tempfile.mkdtemp(prefix="viewer-shot-"))
    aal = nib.load(str(TEMPLATES / "aal.nii.gz"))
    src = np.asarray(aal.dataobj)
    labels = np.zeros(src.shape, np.uint8)
    for new, old in enumerate(STRUCTURES, start=1):
        labels[src == old] = new
    nib.save(nib.Nifti1Image(labels, aal.affine), str(work / "aal6.nii.gz"))
    names = {str(i): n for i, n in enumerate(STRUCTURES.values(), start=1)}
    (work / "aal6.json").write_text(json.dumps({"labels": {"0": "background", **names}}))
    app = ViewerApp(ViewerConfig())
    app.launch(prevent_thread_lock=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(app.demo.local_url)
            page.locator("#viewer-upload input[type=file]").set_input_files(str(TEMPLATES / "ch2.nii.gz"))
            page.wait_for_function(
                "() => document.querySelector('#viewer-status').innerText.includes('opened')"
            )
            page.get_by_text("Files: label maps and prompts").click()
            page.locator("#viewer-load-labels input[type=file]").set_input_files(
                [str(work / "aal6.nii.gz"), str(work / "aal6.json")]
            )
            page.wait_for_function(
                "() => document.querySelector('#viewer-status').innerText.includes('loaded label map')"
            )
            page.get_by_text("Files: label maps and prompts").click()
            (session,) = app.sessions.sessions()
            box = page.locator("#viewer-image img").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            delta = args.slice - session.slice_index
            for _ in range(abs(delta)):
                page.mouse.wheel(0, 120 if delta > 0 else -120)
                page.wait_for_timeout(30)
            page.wait_for_function(
                "(v) => Number(document.querySelector('#viewer-slice input[type=number]').value) === v",
                arg=args.slice,
            )
            page.mouse.move(box["x"] + box["width"] * 0.62, box["y"] + box["height"] * 0.52)
            page.evaluate("document.querySelector('#viewer-controls').scrollTop = 0")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        app.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
