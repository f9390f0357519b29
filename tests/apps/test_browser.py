"""Browser test (acceptance 3): headless Chromium uploads a volume, clicks a point, sees the overlay change,
reads the value under the cursor, exports and checks the downloaded NIfTI; closing the tab frees the session.

Uses Debian's ``chromium`` (``/usr/bin/chromium``) driven by pip's ``playwright``; screenshots go to the
git-ignored ``artifacts/viewer/`` folder.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from salt_seg.data.volume import extract_slice
from salt_seg.inference.sidecars import label_color
from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
from salt_seg_apps.viewer.engine import ModelRegistry
from tests.apps.conftest import ct_volume, las_affine, oracle_loaded, write_nifti

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "viewer"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt-get install -y chromium)"
    ),
]


@pytest.fixture
def server() -> Iterator[ViewerApp]:
    app = ViewerApp(ViewerConfig(max_upload_mb=16), ModelRegistry({"oracle": oracle_loaded}))
    app.launch(prevent_thread_lock=True)
    yield app
    app.close()


@pytest.fixture
def page() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def shot(locator, name: str) -> np.ndarray:  # noqa: ANN001 - playwright Locator
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def page_point(page, px: float, py: float) -> tuple[float, float]:  # noqa: ANN001
    """Page coordinates of natural image pixel ``(px, py)`` (Gradio's own mapping, inverted)."""
    img = page.locator("#viewer-image img")
    box = img.bounding_box()
    nw, nh = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    s = min(box["width"] / nw, box["height"] / nh, 1.0)
    ox, oy = (box["width"] - nw * s) / 2, (box["height"] - nh * s) / 2
    return box["x"] + ox + (px + 0.5) * s, box["y"] + oy + (py + 0.5) * s


def wait_text(page, selector: str, text: str, timeout_ms: int = 120_000) -> str:  # noqa: ANN001
    """The element's text once it contains ``text``; the timeout only guards against a hang (generous: a loaded
    machine can take tens of seconds for a whole-volume action)."""
    page.wait_for_function(
        "([sel, t]) => { const e = document.querySelector(sel); return e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout_ms,
    )
    return page.locator(selector).inner_text()


def settled_shot(page, image, old_src: str | None, name: str, timeout_s: float = 120.0) -> np.ndarray:  # noqa: ANN001
    """Screenshot of ``image`` once its picture has been swapped (new ``src``, decoded) and the page has stopped
    repainting it: two consecutive screenshots agree. Gradio swaps the picture and clears its loading veil after
    the status text, at a time that depends on machine load, so a fixed sleep is not enough."""
    page.wait_for_function(
        "(old) => { const i = document.querySelector('#viewer-image img');"
        " return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
        arg=old_src,
        timeout=int(timeout_s * 1000),
    )
    deadline = time.monotonic() + timeout_s
    last = shot(image, name)
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        current = shot(image, name)
        if current.shape == last.shape and np.array_equal(current, last):
            return current
        last = current
    raise AssertionError(f"the viewer image kept changing for {timeout_s:.0f} s")


def test_upload_click_overlay_export_in_chromium(server: ViewerApp, page, tmp_path: Path) -> None:  # noqa: ANN001
    arr, blob = ct_volume()
    src = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    page.goto(server.demo.local_url)
    page.locator("#viewer-upload input[type=file]").set_input_files(str(src))
    wait_text(page, "#viewer-status", "opened ct")
    page.wait_for_function(
        "() => { const i = document.querySelector('#viewer-image img'); return i && i.naturalWidth > 0; }"
    )
    (session,) = server.sessions.sessions()
    geo = session.geometry()
    assert page.locator("#viewer-image img").evaluate("i => [i.naturalWidth, i.naturalHeight]") == [
        geo.canvas_width,
        geo.canvas_height,
    ]
    image = page.locator("#viewer-image img")
    before = settled_shot(page, image, None, "01_opened.png")

    # value under the cursor: hover the blob's centre
    k = session.slice_index
    ras_blob = extract_slice(blob[::-1], 2, k)
    ys, xs = np.nonzero(ras_blob)
    px, py = geo.to_display(int(xs.mean()), int(ys.mean()))
    x, y = page_point(page, int(px), int(py))
    page.mouse.move(x, y)
    assert "value 300 HU" in wait_text(page, "#viewer-cursor", "value 300 HU")

    # a positive point on the blob: the overlay appears on the structure and only there
    old_src = image.get_attribute("src")
    page.mouse.click(x, y)
    status = wait_text(page, "#viewer-status", "px, predicted IoU")
    assert status.strip() == f"blob: {int(ras_blob.sum())} px, predicted IoU 0.95"
    after = settled_shot(page, image, old_src, "02_point.png")
    assert after.shape == before.shape
    # the slice inside the margin that holds the orientation letters (the screenshot may be scaled)
    sh, sw = after.shape[0] / geo.canvas_height, after.shape[1] / geo.canvas_width
    top, left = round(geo.margin * sh), round(geo.margin * sw)
    after = after[top : top + round(geo.height * sh), left : left + round(geo.width * sw)]
    before = before[top : top + round(geo.height * sh), left : left + round(geo.width * sw)]
    changed = np.abs(after - before).sum(axis=2) > 30
    drawn = np.zeros(changed.shape, bool)
    h, w = changed.shape
    rows = geo.row_index()[np.minimum((np.arange(h) * geo.height / h).astype(int), geo.height - 1)]
    cols = geo.column_index()[np.minimum((np.arange(w) * geo.width / w).astype(int), geo.width - 1)]
    drawn = ras_blob[rows][:, cols]
    assert changed[drawn].mean() > 0.9, changed[drawn].mean()
    assert changed[~drawn].mean() < 0.05, changed[~drawn].mean()
    shift = after[drawn].mean(axis=0) - before[drawn].mean(axis=0)
    assert (
        np.dot(shift, np.asarray(label_color(1)) - before[drawn].mean(axis=0)) > 0
    )  # towards the label colour

    # export and download
    page.locator("#viewer-export").click()
    wait_text(page, "#viewer-status", "exported ct_labels.nii.gz")
    link = page.locator('#viewer-download a[download="ct_labels.nii.gz"]').first
    link.wait_for(timeout=120_000)
    with page.expect_download(timeout=120_000) as info:
        link.click()
    target = tmp_path / "downloaded.nii.gz"
    info.value.save_as(str(target))
    shutil.copyfile(target, ARTIFACTS / "03_export.nii.gz")
    page.screenshot(path=str(ARTIFACTS / "04_page.png"), full_page=True)
    img = nib.load(str(target))
    source = nib.load(str(src))
    assert img.shape == source.shape and np.allclose(img.affine, source.affine)
    data = np.asarray(img.dataobj)
    expected = np.zeros(blob.shape, bool)
    expected[:, :, k] = blob[:, :, k]
    assert np.array_equal(data == 1, expected)

    # closing the tab frees its session
    page.close()
    deadline = time.monotonic() + 30
    while len(server.sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(server.sessions) == 0
