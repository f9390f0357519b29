"""Session freeing (:mod:`salt_seg_apps.viewer.registry`): memory budget and idle time, least recently used first, notes for
the freed tabs; and, at server level, 20 concurrent gradio_client sessions that each keep their own volume."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
from salt_seg_apps.viewer.engine import ModelRegistry
from salt_seg_apps.viewer.registry import SessionRegistry, freed_message
from tests.apps.conftest import ct_volume, oracle_loaded, ras_affine, write_nifti

STATUS, DOWNLOAD = 5, 12  # output positions (see ViewerApp._build)


class FakeSession:
    """What the registry needs of a session: a lock, its size, ``close``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.lock, self.size, self.closed = workdir, threading.RLock(), 0, False

    @property
    def has_volume(self) -> bool:
        return self.size > 0

    def nbytes(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(tmp_path: Path, clock: Clock, **kwargs) -> SessionRegistry:
    kwargs = {"idle_timeout_s": 3600.0, "memory_budget_bytes": 250, **kwargs}
    return SessionRegistry(FakeSession, tmp_path, clock=clock, **kwargs)  # type: ignore[arg-type]


def event(reg: SessionRegistry, key: str, size: int | None = None) -> tuple[FakeSession, str | None]:
    """One event on ``key``'s session that leaves it holding ``size`` bytes (``None``: unchanged)."""
    with reg.use(key) as (session, note):
        if size is not None:
            session.size = size
    return session, note  # type: ignore[return-value]


def test_beyond_the_memory_budget_the_least_recently_used_session_is_freed_and_told(tmp_path: Path) -> None:
    clock = Clock()
    reg = registry(tmp_path, clock)
    a, _ = event(reg, "a", 100)
    clock.now += 60
    b, _ = event(reg, "b", 100)
    clock.now += 60
    c, _ = event(reg, "c", 100)  # 300 > 250: "a", least recently used, is freed
    assert a.closed and not b.closed and not c.closed
    assert "a" not in reg and len(reg) == 2 and reg.nbytes == 200
    fresh, note = event(reg, "a")  # the tab's next event: a fresh, empty session and the reason
    assert fresh is not a and fresh.size == 0
    assert note == "your session was closed to free memory for other users after 2 min without activity"
    assert freed_message(note) == f"⚠️ {note}; open the volume again"
    assert not b.closed and not c.closed and len(reg) == 3  # an empty session frees nobody
    assert event(reg, "a")[1] is None  # told once
    clock.now += 60
    event(reg, "b")  # "b" used: "c" is now the least recently used of the others
    event(reg, "a", 100)  # the volume opened again: 300 > 250, "c" goes
    assert c.closed and not b.closed and reg.peek("a") is fresh


def test_the_session_that_grew_and_busy_sessions_are_never_freed(tmp_path: Path) -> None:
    clock = Clock()
    reg = registry(tmp_path, clock)
    big, _ = event(reg, "big", 400)  # alone over the budget: kept (the volume cap is the uploads' business)
    assert not big.closed and "big" in reg
    with reg.use("a") as (a, _):  # an event in progress on "a"
        a.size = 100
        b, _ = event(reg, "b", 100)  # over budget: "big" is freed, busy "a" is not
        assert big.closed and not a.closed and not b.closed
    assert "a" in reg and "b" in reg


def test_idle_sessions_are_freed_with_a_note_and_a_hover_leaves_it(tmp_path: Path) -> None:
    clock = Clock()
    reg = registry(tmp_path, clock, idle_timeout_s=3600.0)
    a, _ = event(reg, "a", 10)
    clock.now += 1800
    b, _ = event(reg, "b", 10)
    clock.now += 1860  # "a" idle 61 min, "b" 31 min
    assert reg.sweep() == 1 and a.closed and not b.closed
    with reg.use("a", take_note=False) as (_, note):  # a hover: no status line to show the note in
        assert note is None
    _, note = event(reg, "a")
    assert note == "your session was closed after 61 min without activity"


def test_many_empty_sessions_free_empty_ones_first(tmp_path: Path) -> None:
    clock = Clock()
    reg = registry(tmp_path, clock, memory_budget_bytes=10**9, max_sessions=12)
    holders = []
    for i in range(10):
        clock.now += 1
        holders.append(event(reg, f"v{i}", 1000)[0])
    for i in range(30):  # page loads that never open anything
        clock.now += 1
        event(reg, f"e{i}")
    assert len(reg) == 12 and not any(s.closed for s in holders)


def test_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory_budget_bytes must be > 0, got 0"):
        registry(tmp_path, Clock(), memory_budget_bytes=0)
    with pytest.raises(ValueError, match="memory_budget_mb must be >= 1, got 0"):
        ViewerConfig(memory_budget_mb=0)


def test_a_session_measures_its_volume_labels_undo_and_embeddings(make_session, ct_nifti) -> None:
    from salt_seg_apps.viewer import handlers as h
    from salt_seg_apps.viewer.uploads import UploadPolicy

    s = make_session(radius=0)
    assert s.nbytes() == 0
    h.on_upload(s, [str(ct_nifti)], UploadPolicy())
    base = s.volume.array.nbytes + s.labels.nbytes + s.engine.held_arrays()[0].nbytes
    assert s.ras.array.nbytes == s.volume.array.nbytes
    assert s.nbytes() in (base, base + s.ras.array.nbytes)  # the RAS copy counts unless it is a view
    before = s.nbytes()
    h.on_tool(s, "brush")
    h.on_click_xy(s, 30, 30)  # inside the slice (the letters' margin is 20 px)
    assert s.labels.any()
    assert s.nbytes() == before + s.label_slice().nbytes  # one undo snapshot of the slice


# --- the server --------------------------------------------------------------------------------------------------------
def own_volume(tmp_path: Path, i: int) -> tuple[Path, np.ndarray]:
    """Client ``i``'s volume: the CT phantom with its own spacing and its own intensity offset."""
    arr, _ = ct_volume()
    arr = arr + 7 * i
    return write_nifti(
        tmp_path / f"vol{i:02d}.nii.gz", arr, ras_affine(spacing=(1.0 + 0.01 * i, 1.0, 2.0))
    ), arr


def test_a_freed_tab_is_told_and_frees_nobody(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    app = ViewerApp(ViewerConfig(max_upload_mb=2, radius=0), ModelRegistry({"oracle": oracle_loaded}))
    app.launch(prevent_thread_lock=True)
    try:
        url = app.demo.local_url
        clients = [Client(url, verbose=False) for _ in range(3)]
        paths = [own_volume(tmp_path, i)[0] for i in range(3)]
        assert clients[0].predict([handle_file(str(paths[0]))], api_name="/upload")[STATUS] == "opened vol00"
        one = app.sessions.nbytes
        app.sessions.memory_budget_bytes = int(2.5 * one)  # room for two volumes
        assert clients[1].predict([handle_file(str(paths[1]))], api_name="/upload")[STATUS] == "opened vol01"
        assert clients[2].predict([handle_file(str(paths[2]))], api_name="/upload")[STATUS] == "opened vol02"
        assert len(app.sessions) == 2 and app.sessions.nbytes == 2 * one  # the first tab's session was freed
        out = clients[0].predict(api_name="/export")
        assert out[STATUS] == (
            "⚠️ your session was closed to free memory for other users after 0 min without activity; "
            "open the volume again"
        )
        assert len(app.sessions) == 3 and app.sessions.nbytes == 2 * one  # its fresh session freed nobody
        for c, name in ((clients[1], "vol01"), (clients[2], "vol02")):
            assert c.predict(api_name="/export")[STATUS].startswith(f"exported {name}_labels.nii.gz")
    finally:
        app.close()


@pytest.mark.slow
def test_twenty_concurrent_sessions_keep_their_own_volume_and_labels(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    n = 20
    app = ViewerApp(ViewerConfig(max_upload_mb=2, radius=0), ModelRegistry({"oracle": oracle_loaded}))
    app.launch(prevent_thread_lock=True)
    url = app.demo.local_url
    volumes = [own_volume(tmp_path, i) for i in range(n)]
    start = threading.Barrier(n)

    def work(i: int) -> tuple[str, str, list[str], list[str], str, str]:
        path, _ = volumes[i]
        client = Client(url, verbose=False)
        start.wait()  # all at once
        opened = client.predict([handle_file(str(path))], api_name="/upload")[STATUS]
        client.predict("brush", api_name="/tool")
        session = next(
            s for s in app.sessions.sessions() if s.volume is not None and s.volume.name == f"vol{i:02d}"
        )
        px, py = session.geometry().to_display(6 + i, 6 + i)  # a pixel of its own
        clicked = client.predict(int(px), int(py), api_name="/click")[STATUS]
        first = client.predict(api_name="/export")
        start.wait()  # everyone has a volume and a label before anyone checks again
        again = client.predict(api_name="/export")
        return opened, clicked, first[DOWNLOAD], again[DOWNLOAD], again[STATUS], client.session_hash

    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(work, range(n)))
        assert len(app.sessions) == n and app.sessions.nbytes <= app.sessions.memory_budget_bytes
        forger = Client(url, verbose=False)
        forger.session_hash = results[0][-1]  # a live session's hash, without its secret
        with pytest.raises(httpx.HTTPStatusError, match="403 Forbidden"):
            forger.predict(api_name="/export")
        assert len(app.sessions) == n
        for i, (opened, clicked, first, again, status, _) in enumerate(results):
            path, arr = volumes[i]
            assert opened == f"opened vol{i:02d}"
            assert re.fullmatch(r"brush dab from voxel \[\d+, \d+, \d+\]: 29 voxel\(s\) changed", clicked), (
                clicked
            )
            assert status == f"exported vol{i:02d}_labels.nii.gz (source geometry) and vol{i:02d}_labels.json"
            for files in (first, again):
                img = nib.load(next(f for f in files if f.endswith(".nii.gz")))
                assert np.allclose(img.affine, nib.load(str(path)).affine)  # its own volume's geometry
                labels = np.asarray(img.dataobj)
                # its own brush stroke: a disc of radius 3 around slice pixel (6 + i, 6 + i) of the middle
                # axial slice (a RAS file: the file's grid is the viewer's)
                assert labels.sum() > 0 and set(np.unique(labels)) == {0, 1}
                k = arr.shape[2] // 2
                assert labels[:, :, k].sum() == labels.sum()
                ii, jj = np.nonzero(labels[:, :, k])
                centre = (ii.mean(), jj.mean())
                expected = session_voxel(app, i)
                assert np.allclose(centre, expected, atol=0.5), (i, centre, expected)
    finally:
        app.close()


def session_voxel(app: ViewerApp, i: int) -> tuple[float, float]:
    """RAS ``(i, j)`` of slice pixel ``(6 + i, 6 + i)`` of the middle axial slice (the viewer's own mapping)."""
    from salt_seg.data.volume import slice_to_voxel

    session = next(
        s for s in app.sessions.sessions() if s.volume is not None and s.volume.name == f"vol{i:02d}"
    )
    v = slice_to_voxel(session.ras.shape, 2, session.ras.shape[2] // 2, 6 + i, 6 + i)
    return float(v[0]), float(v[1])


def test_idle_sessions_are_freed_without_any_traffic(tmp_path: Path) -> None:
    import time

    from gradio_client import Client, handle_file

    app = ViewerApp(
        ViewerConfig(max_upload_mb=2, radius=0, idle_timeout_s=0.5), ModelRegistry({"oracle": oracle_loaded})
    )
    app.launch(prevent_thread_lock=True)
    try:
        client = Client(app.demo.local_url, verbose=False)
        path, _ = own_volume(tmp_path, 0)
        assert client.predict([handle_file(str(path))], api_name="/upload")[STATUS] == "opened vol00"
        (session,) = app.sessions.sessions()
        deadline = (
            time.monotonic() + 60
        )  # the sweeper runs every 0.125 s here; the deadline only stops a hang
        # the registry forgets the session before its folder is removed (outside the lock): wait for both
        while (len(app.sessions) or session.workdir.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(app.sessions) == 0 and session.volume is None and not session.workdir.exists()
        out = client.predict(api_name="/export")
        assert out[STATUS] == "⚠️ your session was closed after 0 min without activity; open the volume again"
    finally:
        app.close()
