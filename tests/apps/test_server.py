"""Server-level test (acceptance 2): the running Gradio app driven through ``gradio_client``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from PIL import Image

from salt_seg.data.volume import extract_slice
from salt_seg.inference.sidecars import label_color
from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
from salt_seg_apps.viewer.engine import ModelRegistry
from tests.apps.conftest import ct_volume, las_affine, oracle_loaded, write_nifti

# output positions of every event (see ViewerApp._build: image, slice, info, cursor, volumes, status, ...)
IMAGE, STATUS, DOWNLOAD = 0, 5, 12


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ViewerApp]:
    app = ViewerApp(ViewerConfig(max_upload_mb=2), ModelRegistry({"oracle": oracle_loaded}))
    app.launch(prevent_thread_lock=True)
    yield app
    app.close()


def png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_upload_click_export_through_the_client(server: ViewerApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    arr, blob = ct_volume()
    src = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    url = server.demo.local_url
    client = Client(url, verbose=False)
    out = client.predict([handle_file(str(src))], api_name="/upload")
    assert out[STATUS] == "opened ct"
    (session,) = server.sessions.sessions()
    before = png(out[IMAGE])
    assert np.array_equal(before, session.render())  # PNG: the page gets exactly the rendered pixels
    # click the blob's centre on the viewed (axial, middle) slice
    k = session.slice_index
    ras_blob = extract_slice(blob[::-1], 2, k)
    ys, xs = np.nonzero(ras_blob)
    px, py = session.geometry().to_display(int(xs.mean()), int(ys.mean()))
    out = client.predict(int(px), int(py), api_name="/click")
    n = int(ras_blob.sum())
    assert out[STATUS] == f"blob: {n} px, predicted IoU 0.95"
    after = png(out[IMAGE])
    geo = session.geometry()
    m = geo.margin  # the slice sits inside the band that holds the orientation letters
    changed = np.any(after != before, axis=2)[m : m + geo.height, m : m + geo.width]
    after, before = (
        after[m : m + geo.height, m : m + geo.width],
        before[m : m + geo.height, m : m + geo.width],
    )
    drawn = ras_blob[geo.row_index()][:, geo.column_index()]
    assert changed[drawn].mean() > 0.95 and changed[~drawn].mean() < 0.05  # only the structure changed
    tint = after[drawn].astype(float).mean(axis=0) - before[drawn].astype(float).mean(axis=0)
    colour = np.asarray(label_color(1), float) - before[drawn].astype(float).mean(axis=0)
    assert np.dot(tint, colour) > 0  # towards the label's colour
    out = client.predict(api_name="/export")
    assert out[STATUS] == "exported ct_labels.nii.gz (source geometry) and ct_labels.json"
    nii = next(p for p in out[DOWNLOAD] if p.endswith(".nii.gz"))
    img = nib.load(nii)
    source = nib.load(str(src))
    assert img.shape == source.shape and np.allclose(img.affine, source.affine)
    data = np.asarray(img.dataobj)
    expected = np.zeros(blob.shape, bool)
    expected[:, :, k] = blob[:, :, k]  # LAS file: RAS slice k is file slice k
    assert np.array_equal(data == 1, expected)


def test_sessions_are_isolated_and_paths_are_not_served(server: ViewerApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    arr, _ = ct_volume()
    src = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    url = server.demo.local_url
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    assert a.predict([handle_file(str(src))], api_name="/upload")[STATUS] == "opened ct"
    out = b.predict(api_name="/export")
    assert out[STATUS] == "⚠️ open a volume first (upload a NIfTI file or a DICOM series)"
    assert len(server.sessions) == 2
    # the page cannot read server files: not through Gradio's file route...
    assert requests.get(f"{url}gradio_api/file={src}", timeout=10).status_code == 403
    assert requests.get(f"{url}gradio_api/file=/etc/hostname", timeout=10).status_code == 403
    # ...nor by handing a server path to an event (raw HTTP: gradio_client would upload the file itself)
    body = {"data": [[{"path": str(src), "meta": {"_type": "gradio.FileData"}}]]}
    event = requests.post(f"{url}gradio_api/call/upload", json=body, timeout=10).json()["event_id"]
    answer = requests.get(f"{url}gradio_api/call/upload/{event}", timeout=60).text
    assert "event: error" in answer and "event: complete" not in answer
    assert b.predict(api_name="/export")[STATUS].startswith("⚠️ open a volume first")
    # uploads above the limit are refused by the server itself
    big = b"\0" * (3 * 1024**2)
    r = requests.post(f"{url}gradio_api/upload", files={"files": ("big.nii", big)}, timeout=30)
    assert r.status_code == 413


def test_a_bad_upload_shows_an_error_and_the_app_keeps_working(server: ViewerApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    arr, _ = ct_volume()
    good = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(good.read_bytes()[:500])
    client = Client(server.demo.local_url, verbose=False)
    out = client.predict([handle_file(str(bad))], api_name="/upload")
    assert out[STATUS].startswith("⚠️ broken.nii.gz: ")
    out = client.predict([handle_file(str(good))], api_name="/upload")
    assert out[STATUS] == "opened ct"


def test_tab_close_frees_the_session(server: ViewerApp) -> None:
    s = server.sessions.get("abc")
    folder = s.workdir
    assert folder.is_dir() and "abc" in server.sessions
    server.sessions.close("abc")
    assert "abc" not in server.sessions and not folder.exists() and s.labels is None


def test_the_command_line_path_opens_in_every_new_tab(tmp_path: Path) -> None:
    arr, _ = ct_volume()
    src = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    app = ViewerApp(ViewerConfig(path=str(src), radius=0), ModelRegistry({"oracle": oracle_loaded}))
    try:
        a, b = app.sessions.get("a"), app.sessions.get("b")
        assert app._open_initial(a)["status"] == "opened ct"
        assert app._open_initial(b)["status"] == "opened ct"
        assert a.volume is b.volume  # read once, shared read-only
        # ...and so left out of each session's memory (the label map, the prepared volume and the RAS grid count)
        own = a.labels.nbytes + sum(x.nbytes for x in a.engine.held_arrays())
        own += 0 if np.shares_memory(a.ras.array, a.volume.array) else a.ras.array.nbytes
        assert a.nbytes() == b.nbytes() == own
        a.replace_labels(np.ones(a.ras.shape, np.uint16))
        assert not b.labels.any()  # label maps are per tab
    finally:
        app.close()


def test_a_command_line_folder_with_two_series_offers_the_picker(tmp_path: Path) -> None:
    from tests.apps.conftest import write_dicom_series

    write_dicom_series(
        tmp_path / "study" / "a", np.full((3, 8, 8), 10, np.int16), series_uid="1.2.9.1", series_number=1
    )
    write_dicom_series(
        tmp_path / "study" / "b", np.full((4, 8, 8), 20, np.int16), series_uid="1.2.9.2", series_number=2
    )
    app = ViewerApp(ViewerConfig(path=str(tmp_path / "study")), ModelRegistry({"oracle": oracle_loaded}))
    try:
        s = app.sessions.get("a")
        out = app._open_initial(s)
        assert out["series"]["visible"] is True and len(out["series"]["choices"]) == 2
        from salt_seg_apps.viewer import handlers as h

        out = h.on_open_series(s, 0, app.policy)
        assert out["status"].startswith("opened series-") and s.volume.shape[2] == 3
    finally:
        app.close()


def test_the_sigterm_handler_removes_the_folder_and_exits() -> None:
    import signal

    app = ViewerApp(ViewerConfig(), ModelRegistry({"oracle": oracle_loaded}))
    try:
        assert app.sessions.get("tab").workdir.is_dir() and app.root.is_dir()
        with pytest.raises(SystemExit) as exc:
            app._on_sigterm(signal.SIGTERM, None)
        assert exc.value.code == 128 + signal.SIGTERM and not app.root.exists()
    finally:
        app.close()


@pytest.mark.slow
def test_sigterm_removes_the_apps_folder(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "serve.py"
    script.write_text(
        "from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig\n"
        "from salt_seg_apps.viewer.engine import ModelRegistry\n"
        "from tests.apps.conftest import oracle_loaded\n"
        "app = ViewerApp(ViewerConfig(), ModelRegistry({'oracle': oracle_loaded}))\n"
        "app.launch(prevent_thread_lock=True)\n"
        "(app.sessions.get('tab').workdir / 'work.bin').write_bytes(b'x')\n"
        "print(app.root, flush=True)\n"
        "app.demo.block_thread()\n"  # no try/finally: the signal handler alone must clean up
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        root = Path(proc.stdout.readline().strip())
        assert root.name.startswith("salt-seg-viewer-") and any(root.rglob("work.bin"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert not root.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
