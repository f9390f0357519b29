"""The MONAI Label app (apps/monailabel/): the real server on loopback, its REST infer endpoint, the label it returns.

Needs the ``monailabel`` extra (``bash scripts/install_monailabel.sh``); skipped without it, except where
``SALT_SEG_REQUIRE_MONAILABEL=1`` (.ci/run) makes a missing install a failure.

One server serves a run built on the built-in base (a fresh SALT adapter, which leaves the base's weights as they
are, plus two untrained class tokens): the interactive task answers clicks and boxes as the built-in base does,
and the automatic task exists (its untrained tokens say nothing about content; only geometry and the class set
are checked there).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.inference.conftest import ellipsoid, las_affine

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "apps" / "monailabel"
SHAPE = (64, 48, 20)
CENTRE = (30, 22, 10)
RADII = (9, 7, 6)
CLASSES = {1: "blob", 2: "rest"}

if importlib.util.find_spec("monailabel") is None:
    if os.environ.get("SALT_SEG_REQUIRE_MONAILABEL") == "1":
        raise RuntimeError(
            "monailabel is not installed but SALT_SEG_REQUIRE_MONAILABEL=1: bash scripts/install_monailabel.sh"
        )
    pytest.skip(
        "monailabel is not installed (the salt-seg[monailabel] extra: bash scripts/install_monailabel.sh)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.monailabel

sys.path.insert(0, str(APP_DIR))
import saltseg_tasks  # noqa: E402 - from the app folder, as MONAI Label imports it

sys.path.remove(str(APP_DIR))


def blob_volume() -> tuple[np.ndarray, np.ndarray]:
    """A bright (300 HU) ellipsoid in -1000 HU with noise, and its mask."""
    blob = ellipsoid(SHAPE, CENTRE, RADII)
    arr = np.where(blob, 300.0, -1000.0) + np.random.default_rng(0).normal(0.0, 20.0, SHAPE)
    return arr.astype(np.float32), blob


def builtin_run(folder: Path) -> Path:
    """A run directory: a fresh SALT adapter with two class tokens on the built-in base (``base_checkpoint:
    builtin``), what ``salt-seg train`` writes before its first step."""
    from dataclasses import replace

    from salt_seg.adapters import AdapterConfig, inject_adapters, save_adapter
    from salt_seg.model.builtin import builtin_checkpoint, pretrain_record
    from salt_seg.model.checkpoint import load_base_model

    model, info = load_base_model(None, builtin_checkpoint("builtin"), num_classes=2)
    assert info is not None
    record = replace(pretrain_record(model.image_size), intensity="minmax", classes=dict(CLASSES))
    config = AdapterConfig(name="salt", train_class_tokens=True)
    inject_adapters(model, config, base_hash=info.content_hash, svd_cache=False, progress=False)
    folder.mkdir(parents=True)
    save_adapter(
        folder / "adapter.safetensors",
        model,
        config,
        base_variant=model.variant,
        base_hash=info.content_hash,
        preprocessing=record,
        class_names=record.classes,
        extra={"base_variant": model.variant, "base_checkpoint": "builtin", "step": 0},
    )
    (folder / "config.yaml").write_text(f"model: {{variant: {model.variant}}}\n")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str, studies: Path, log: Path) -> None:
        self.url, self.studies, self.log = url, studies, log

    def infer(self, model: str, params: dict[str, Any], output: str = "image") -> Any:
        import requests

        return requests.post(
            f"{self.url}/infer/{model}",
            params={"image": "case01", "output": output},
            files={"params": (None, json.dumps(params))},
            timeout=600,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import requests

    tmp = tmp_path_factory.mktemp("monailabel")
    studies = tmp / "studies"
    studies.mkdir()
    arr, _ = blob_volume()
    nib.save(nib.Nifti1Image(arr, las_affine()), str(studies / "case01.nii.gz"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        run = builtin_run(tmp / "run")
    port = free_port()
    log = tmp / "server.log"
    # to the console (captured in server.log), not MONAI Label's default apps/monailabel/logs/ in the checkout
    log_config = tmp / "logging.json"
    handler = {"class": "logging.StreamHandler", "formatter": "plain"}
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s"}},
                "handlers": {"console": handler},
                "root": {"level": "INFO", "handlers": ["console"]},
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),  # never the user's ~/.cache/monailabel
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    }
    cmd = [sys.executable, str(APP_DIR / "serve.py"), "--studies", str(studies), "-c", "run", str(run)]
    cmd += [
        "-c",
        "device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log_config",
        str(log_config),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        # a safety net against a hung start, not a speed requirement
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the MONAI Label server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the MONAI Label server did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, studies, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_label(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(_gunzip(content))


def _gunzip(content: bytes) -> bytes:
    import gzip

    return gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content


def check_geometry(img: nib.Nifti1Image) -> np.ndarray:
    """The label has the source image's grid (shape, affine) and integer class ids; returns its array."""
    assert img.shape == SHAPE
    np.testing.assert_allclose(img.affine, las_affine(), atol=1e-4)
    data = np.asarray(img.dataobj)
    assert np.issubdtype(data.dtype, np.integer)
    return data


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_info_lists_the_interactive_and_the_automatic_task(server: Server) -> None:
    import requests

    info = requests.get(f"{server.url}/info/", timeout=60).json()
    models = info["models"]
    assert models["salt_seg_interactive"]["type"] == "deepedit"
    assert models["salt_seg_interactive"]["labels"] == {"blob": 1, "rest": 2, "background": 0}
    assert models["salt_seg_auto"]["type"] == "segmentation"
    assert models["salt_seg_auto"]["labels"] == {"blob": 1, "rest": 2}
    assert info["labels"] == ["background", "blob", "rest"]  # what Slicer's DeepEdit mode sends clicks for


def test_a_foreground_click_segments_the_object_in_the_image_geometry(server: Server) -> None:
    _, blob = blob_volume()
    r = server.infer(
        "salt_seg_interactive", {"foreground": [list(CENTRE)], "background": [], "label": "blob"}
    )
    assert r.status_code == 200, r.text
    data = check_geometry(read_label(r.content))
    assert set(np.unique(data).tolist()) == {0, 1}
    assert data[CENTRE] == 1
    assert dice(data == 1, blob) > 0.9
    # propagated from the clicked slice (k = 10) through the object's slices (its one-voxel caps may stop it)
    labelled = set(np.nonzero(data)[2].tolist())
    assert set(range(6, 15)) <= labelled <= set(np.nonzero(blob)[2].tolist())


def test_deepedit_clicks_per_label_go_to_their_class(server: Server) -> None:
    _, blob = blob_volume()
    r = server.infer(
        "salt_seg_interactive", {"rest": [list(CENTRE)], "background": [[3, 3, 10]], "label": "rest"}, "all"
    )
    assert r.status_code == 200, r.text
    parts = multipart(r)
    params = json.loads(parts["params"])
    assert params["label_names"] == {"blob": 1, "rest": 2}
    assert params["mode"] == "propagate" and params["slice_axis"] == 2 and params["unused_clicks"] == []
    data = check_geometry(read_label(parts["image"]))
    assert set(np.unique(data).tolist()) == {0, 2}
    assert dice(data == 2, blob) > 0.9


def test_a_box_segments_inside_it(server: Server) -> None:
    _, blob = blob_volume()
    roi = [21, 39, 15, 29, 8, 12]  # i, j around the object; five slices k = 8..12
    r = server.infer("salt_seg_interactive", {"roi": roi, "label": "blob"})
    assert r.status_code == 200, r.text
    data = check_geometry(read_label(r.content))
    assert set(np.unique(data).tolist()) == {0, 1}
    assert sorted(set(np.nonzero(data)[2].tolist())) == [8, 9, 10, 11, 12]
    inside = np.zeros(SHAPE, dtype=bool)
    inside[21:40, 15:30, 8:13] = True
    assert dice(data == 1, blob & inside) > 0.9


def test_the_automatic_task_returns_the_run_classes_on_the_image_grid(server: Server) -> None:
    r = server.infer("salt_seg_auto", {})
    assert r.status_code == 200, r.text
    data = check_geometry(read_label(r.content))
    assert set(np.unique(data).tolist()) <= {0, 1, 2}


def test_a_click_outside_the_image_is_refused_with_its_reason(server: Server) -> None:
    r = server.infer("salt_seg_interactive", {"foreground": [[64, 0, 0]], "label": "blob"})
    assert r.status_code == 400
    assert r.json() == {"detail": "click [64, 0, 0] lies outside the image (shape [64, 48, 20])"}


def multipart(r: Any) -> dict[str, bytes]:
    """The parts of MONAI Label's ``multipart/form-data`` answer (``output=all``) by field name."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    parts = {}
    for part in MultipartDecoder.from_response(r).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        parts[name] = part.content
    return parts


def test_clicks_map_onto_the_model_slices() -> None:
    """Unit: clicks in source voxels become one prompt per clicked slice, (x, y) along the two other axes."""
    pos, neg, cls = saltseg_tasks.parse_clicks(
        {"foreground": [[5, 6, 7], [8, 9, 7], [1, 2, 3]], "background": [[4, 4, 7], [0, 0, 1]]},
        {1: "a", 2: "b"},
    )
    assert cls == 1
    prompts, unused = saltseg_tasks.request_prompts(pos, neg, None, cls, (10, 10, 10), axis=2)
    assert [(p.slice_index, p.points, p.point_labels) for p in prompts] == [
        (3, [(1.0, 2.0)], [1]),
        (7, [(5.0, 6.0), (8.0, 9.0), (4.0, 4.0)], [1, 1, 0]),
    ]
    assert unused == [(0, 0, 1)]
    # a box on slices along axis 0: in-plane (x, y) = (j, k)
    prompts, _ = saltseg_tasks.request_prompts({}, [], ((2, 3, 4), (3, 5, 6)), 2, (10, 10, 10), axis=0)
    assert [(p.slice_index, p.box, p.class_id) for p in prompts] == [
        (2, (3.0, 4.0, 5.0, 6.0), 2),
        (3, (3.0, 4.0, 5.0, 6.0), 2),
    ]
    with pytest.raises(ValueError, match="not one of the model's classes"):
        saltseg_tasks.parse_clicks({"label": "liver", "foreground": [[1, 1, 1]]}, {1: "a", 2: "b"})
    with pytest.raises(ValueError, match="nothing to segment"):
        saltseg_tasks.request_prompts({}, [(1, 1, 1)], None, 1, (10, 10, 10), axis=2)
