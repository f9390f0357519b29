"""HTTP guards (:mod:`salt_seg_apps.viewer.guard`): server-issued secrets, session hashes bound to them, uploads not served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests

from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
from salt_seg_apps.viewer.engine import ModelRegistry
from salt_seg_apps.viewer.guard import SessionGuard
from tests.apps.conftest import ct_volume, las_affine, oracle_loaded, write_nifti

STATUS, DOWNLOAD = 5, 12  # output positions (see ViewerApp._build)


def test_secrets_are_signed_by_the_server_that_issued_them() -> None:
    guard, other = SessionGuard(), SessionGuard()
    secret = guard.issue()
    assert guard.is_valid(secret) and not other.is_valid(secret)
    token, sig = secret.split(".")
    assert len(token) >= 32 and not guard.is_valid(f"{token}.{'0' * len(sig)}")
    assert not guard.is_valid(None) and not guard.is_valid("") and not guard.is_valid("guessed")


def test_a_session_key_needs_the_secret_as_well_as_the_hash() -> None:
    guard = SessionGuard()
    a, b = guard.issue(), guard.issue()
    assert guard.session_key(a, "tab1") == guard.session_key(a, "tab1")
    assert (
        len({guard.session_key(a, "tab1"), guard.session_key(a, "tab2"), guard.session_key(b, "tab1")}) == 3
    )
    with pytest.raises(PermissionError, match="no valid viewer session; reload the page"):
        guard.session_key("forged.secret", "tab1")


def test_a_session_hash_belongs_to_the_first_secret_that_used_it() -> None:
    guard = SessionGuard(max_owners=2)
    a, b = guard.issue(), guard.issue()
    assert guard.claim("h1", a) and guard.claim("h1", a)
    assert not guard.claim("h1", b)
    assert guard.claim("h2", b) and guard.claim("h3", b)  # 2 remembered at most: "h1" is forgotten
    assert guard.claim("h1", b)


@pytest.fixture
def server() -> Iterator[ViewerApp]:
    app = ViewerApp(ViewerConfig(max_upload_mb=2, radius=0), ModelRegistry({"oracle": oracle_loaded}))
    app.launch(prevent_thread_lock=True)
    yield app
    app.close()


def test_a_forged_session_hash_gets_nothing(server: ViewerApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    arr, _ = ct_volume()
    src = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    url = server.demo.local_url
    owner = Client(url, verbose=False)
    assert owner.predict([handle_file(str(src))], api_name="/upload")[STATUS] == "opened ct"
    owner.predict("brush", api_name="/tool")
    owner.predict(100, 100, api_name="/click")
    (session,) = server.sessions.sessions()
    painted = int(session.labels.sum())
    assert painted > 0
    # another client sending the owner's session hash: refused at the door, whatever it asks
    thief = Client(url, verbose=False)
    thief.session_hash = owner.session_hash
    for api in ("/export", "/undo", "/clear"):
        with pytest.raises(httpx.HTTPStatusError, match="403 Forbidden"):
            thief.predict(api_name=api)
    # nor may anyone read the owner's event stream, with a fresh cookie or none
    stream = requests.get(
        f"{url}gradio_api/queue/data", params={"session_hash": owner.session_hash}, timeout=10
    )
    assert stream.status_code == 403 and stream.text == "this session belongs to another client"
    body = {"data": [], "fn_index": 0, "session_hash": owner.session_hash}
    assert requests.post(f"{url}gradio_api/queue/join", json=body, timeout=10).status_code == 403
    for content_type in (None, "APPLICATION/JSON", "text/plain"):  # FastAPI reads JSON from all of them
        headers = {"content-type": content_type} if content_type else {}
        r = requests.post(f"{url}gradio_api/queue/join", data=json.dumps(body), headers=headers, timeout=10)
        assert r.status_code == 403, content_type
    assert requests.get(f"{url}gradio_api/heartbeat/{owner.session_hash}", timeout=10).status_code == 403
    # a secret the server did not issue is replaced by one it did
    r = requests.get(url, cookies={next(iter(owner.cookies)): "chosen.by-the-client"}, timeout=10)
    issued = r.cookies[next(iter(owner.cookies))]
    assert issued != "chosen.by-the-client" and server.guard.is_valid(issued)
    # the owner's work is untouched and still theirs
    assert len(server.sessions) == 1 and int(session.labels.sum()) == painted
    out = owner.predict(api_name="/export")
    assert out[STATUS] == "exported ct_labels.nii.gz (source geometry) and ct_labels.json"


def test_uploaded_files_are_never_served_and_are_deleted_once_read(server: ViewerApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    arr, _ = ct_volume()
    src = write_nifti(tmp_path / "ct.nii.gz", arr, las_affine())
    url = server.demo.local_url
    # an upload that no event has read yet: on disk in Gradio's folder, but not served
    r = requests.post(f"{url}gradio_api/upload", files={"files": ("mine.txt", b"private")}, timeout=30)
    (pending,) = r.json()
    assert Path(pending).read_bytes() == b"private"
    fetched = requests.get(f"{url}gradio_api/file={pending}", timeout=10)
    assert fetched.status_code == 403 and fetched.text == "uploaded files are not served"
    # an upload read into a session: gone from Gradio's folder (the session keeps its own copy)
    client = Client(url, verbose=False)
    before = set(server.demo.upload_file_set)
    assert client.predict([handle_file(str(src))], api_name="/upload")[STATUS] == "opened ct"
    (read,) = set(server.demo.upload_file_set) - before
    assert not Path(read).exists()
    assert requests.get(f"{url}gradio_api/file={read}", timeout=10).status_code == 403
    folder, name = str(Path(pending).parent), Path(pending).name
    for route in (
        f"file={pending}",
        f"file/{pending}",
        f"file/{pending.lstrip('/')}",
        f"file={folder}/./{name}",
    ):
        r = requests.get(f"{url}gradio_api/{route}", timeout=10)
        assert (r.status_code, r.text) == (403, "uploaded files are not served"), route
        assert requests.head(f"{url}gradio_api/{route}", timeout=10).status_code == 403, route
    (session,) = server.sessions.sessions()
    assert session.source_path.read_bytes() == src.read_bytes() and session.source_path.is_relative_to(
        session.workdir
    )
    # what the viewer sends back (its own outputs) is still served
    out = client.predict(api_name="/export")
    nii = next(p for p in out[DOWNLOAD] if p.endswith(".nii.gz"))
    served = requests.get(f"{url}gradio_api/file={nii}", timeout=10)
    assert served.status_code == 200 and served.content == Path(nii).read_bytes()
    # a label map loaded from an upload is deleted once read
    labels = write_nifti(tmp_path / "labels.nii.gz", np.zeros(arr.shape, np.uint8), las_affine())
    assert client.predict([handle_file(str(labels))], api_name="/load_labels")[STATUS].startswith("loaded")
    (label_upload,) = set(server.demo.upload_file_set) - before - {read}
    assert not Path(label_upload).exists()
    Path(pending).unlink()  # the test's own leftover (Gradio's folder is shared by every app on the machine)


def test_taking_an_upload_leaves_no_empty_folder_behind(tmp_path: Path) -> None:
    from salt_seg_apps.viewer.uploads import UploadPolicy, take_uploads

    root = tmp_path / "gradio"
    (root / "abc").mkdir(parents=True)
    (root / "abc" / "scan.nii.gz").write_bytes(b"one")
    (root / "def").mkdir()
    (root / "def" / "scan.nii.gz").write_bytes(b"two")
    (root / "def" / "other.nii.gz").write_bytes(b"three")
    policy = UploadPolicy(roots=[root])
    taken = take_uploads([root / "abc" / "scan.nii.gz", root / "def" / "scan.nii.gz"], tmp_path / "s", policy)
    assert [p.read_bytes() for p in taken] == [b"one", b"two"] and [p.name for p in taken] == [
        "scan.nii.gz"
    ] * 2
    assert not (root / "abc").exists() and sorted(p.name for p in (root / "def").iterdir()) == [
        "other.nii.gz"
    ]
    with pytest.raises(ValueError, match="scan.nii.gz: the upload is not a file"):
        take_uploads([root / "abc" / "scan.nii.gz"], tmp_path / "s", policy)
