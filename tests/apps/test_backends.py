"""``salt-seg app --precision`` and ``--backend onnx`` (issue 16, items 2 and 3, for the viewer): a session's clicks,
automatic segmentation and propagation at bf16 or on ONNX Runtime match fp32 PyTorch within the tolerances of the
predict tests (tests/inference/test_precision_inference.py, tests/inference/test_onnx.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salt_seg.cli import main
from salt_seg.data import Volume
from salt_seg.inference import load_inference_model
from salt_seg.prompts import Prompt
from salt_seg_apps.viewer import actions
from salt_seg_apps.viewer.app import ViewerConfig, default_registry
from salt_seg_apps.viewer.engine import ModelRegistry, load_exported, load_trained
from tests.inference.conftest import ras_affine, tiny_run  # noqa: F401 - the fixture

#: tests/inference/test_precision_inference.py: probabilities within 0.05, >= 98 % equal label-map voxels
BF16_PROB_TOL, BF16_AGREE = 0.05, 0.98
#: tests/inference/test_onnx.py: probabilities within 1e-4, >= 99.9 % equal label-map voxels
ONNX_PROB_TOL, ONNX_AGREE = 1e-4, 0.999


def _volume() -> Volume:
    rng = np.random.default_rng(4)
    image = rng.normal(size=(48, 40, 5)).astype(np.float32)
    image[10:30, 12:28] += 3.0
    return Volume(image, ras_affine(), name="vol")


def _clicks(session) -> list[Prompt]:
    """A point, two points, a box and a point with a box on every axial slice, in display pixels."""
    out = []
    for i in range(session.ras.shape[2]):
        out += [
            Prompt(points=[(20.0, 15.0)], point_labels=[1], class_id=1, slice_index=i, axis=2),
            Prompt(
                points=[(18.0, 12.0), (3.0, 40.0)], point_labels=[1, 0], class_id=1, slice_index=i, axis=2
            ),
            Prompt(box=(8.0, 6.0, 30.0, 26.0), class_id=1, slice_index=i, axis=2),
            Prompt(
                points=[(20.0, 15.0)], point_labels=[1], box=(5, 4, 33, 30), class_id=2, slice_index=i, axis=2
            ),
        ]
    return out


def _outputs(session) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and masks of every click, through the session's engine (the click path)."""
    engine = session.require_prompt_engine()
    outs = [engine.decode(2, [(p.slice_index, p)])[0] for p in _clicks(session)]
    return np.stack([o.probabilities for o in outs]), np.stack([o.mask for o in outs])


@pytest.fixture(scope="module")
def onnx_dir(tiny_run: Path, tmp_path_factory) -> Path:  # noqa: F811
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from salt_seg.inference.onnx_model import export_onnx

    out = tmp_path_factory.mktemp("viewer_onnx")
    export_onnx(load_inference_model(tiny_run), out)
    return out


def _session(make_session, loader, **kwargs):
    s = make_session(ModelRegistry({"m": loader}), radius=0, **kwargs)
    s.open(_volume())
    assert s.engine is not None, s.engine_error
    return s


def test_bf16_session_matches_fp32(make_session, tiny_run: Path) -> None:  # noqa: F811
    ref = _session(make_session, lambda: load_trained(str(tiny_run)))
    low = _session(make_session, lambda: load_trained(str(tiny_run)), precision="bf16")
    assert low.engine.predictor.precision == "bf16" and ref.engine.predictor.precision == "fp32"
    p_ref, m_ref = _outputs(ref)
    p_low, m_low = _outputs(low)
    assert 0.05 < m_ref.mean() < 0.95  # masks with both inside and outside
    assert float(np.abs(p_low - p_ref).max()) <= BF16_PROB_TOL
    assert float((m_low == m_ref).mean()) >= BF16_AGREE
    # automatic segmentation (class tokens) of the whole volume through the session
    for s in (ref, low):
        actions.auto_volume(s)
    assert ref.labels.any()
    assert float((low.labels == ref.labels).mean()) >= BF16_AGREE


def test_onnx_session_matches_torch(make_session, tiny_run: Path, onnx_dir: Path) -> None:  # noqa: F811
    from salt_seg.inference.onnx_model import OnnxPredictor

    ref = _session(make_session, lambda: load_trained(str(tiny_run)))
    ort = _session(make_session, lambda: load_exported(str(onnx_dir), threads=1))
    assert isinstance(ort.engine.predictor, OnnxPredictor)
    assert ort.engine.class_names == ref.engine.class_names == {1: "liver", 2: "spleen tumour"}
    p_ref, m_ref = _outputs(ref)
    p_ort, m_ort = _outputs(ort)
    assert 0.05 < m_ref.mean() < 0.95
    assert float(np.abs(p_ort - p_ref).max()) <= ONNX_PROB_TOL
    assert float((m_ort == m_ref).mean()) >= ONNX_AGREE
    # a click as the page makes it, then automatic segmentation and propagation, all through ONNX Runtime
    for s in (ref, ort):
        s.set_slice(2)
        s.click(20, 15)
        assert s.labels.any()
        actions.propagate(s)
    assert float((ort.labels == ref.labels).mean()) >= ONNX_AGREE
    for s in (ref, ort):
        actions.auto_volume(s)
    assert float((ort.labels == ref.labels).mean()) >= ONNX_AGREE
    assert ort.nbytes() > ort.labels.nbytes + 2 * ort.volume.array.nbytes  # cached ONNX features are counted


def test_config_offers_the_export_on_onnx_runtime(onnx_dir: Path) -> None:
    from salt_seg.inference.onnx_model import OnnxModel

    reg = default_registry(ViewerConfig(model=str(onnx_dir), backend="onnx", builtin=False, threads=1))
    assert reg.names == [f"onnx: {onnx_dir.name}"]
    assert isinstance(reg.get(reg.names[0]).model, OnnxModel)
    with pytest.raises(ValueError, match="--backend onnx needs --model"):
        ViewerConfig(backend="onnx")


def test_app_passes_precision_and_backend(monkeypatch: pytest.MonkeyPatch, onnx_dir: Path) -> None:
    import salt_seg_apps.viewer.app as app_module

    seen = {}

    class FakeApp:
        def __init__(self, config):
            seen["config"] = config
            self.demo = type("D", (), {"block_thread": staticmethod(lambda: None)})()

        def launch(self, prevent_thread_lock=False):  # noqa: ARG002
            return "http://127.0.0.1:7860/"

        def close(self):
            pass

    monkeypatch.setattr(app_module, "ViewerApp", FakeApp)
    assert main(["app", "--model", str(onnx_dir), "--backend", "onnx", "--threads", "1"]) == 0
    c = seen["config"]
    assert (c.backend, c.precision, c.device, c.model) == ("onnx", "fp32", "cpu", str(onnx_dir))
    assert main(["app", "--precision", "bf16", "--device", "cpu", "--threads", "1"]) == 0
    assert (seen["config"].backend, seen["config"].precision) == ("torch", "bf16")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "onnx"], "--backend onnx needs --model: a folder written by `salt-seg export-onnx`"),
        (
            ["--backend", "onnx", "--model", ".", "--precision", "bf16"],
            "--precision bf16: the onnx backend runs fp32; use --backend torch",
        ),
        (
            ["--backend", "onnx", "--model", ".", "--library", "LIB"],
            "--backend onnx runs the one exported --model folder; drop --library",
        ),
        (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA device"),
    ],
)
def test_backend_and_precision_errors_are_one_line(
    extra, message, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "index.json").write_text("{}")
    assert main(["app", *[str(tmp_path) if a == "LIB" else a for a in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"salt-seg app: error: {message}") and "\n" not in err


def test_mirrored_session_averages_each_click_over_the_mirror_image(make_session, tiny_run: Path) -> None:  # noqa: F811
    """``salt-seg app --mirror``: the session's predictor mirrors, and each click's probabilities are the mean of
    the plain click's and of the mirrored click's on the mirrored slice (the slices the engine prepared)."""
    from salt_seg.inference.backend import slice_array
    from salt_seg.model.predictor import Predictor
    from salt_seg.prompts import mirror_prompt

    plain = _session(make_session, lambda: load_trained(str(tiny_run)))
    both = _session(make_session, lambda: load_trained(str(tiny_run)), mirror=True)
    assert both.engine.predictor.mirror and not plain.engine.predictor.mirror
    p_both, m_both = _outputs(both)
    p_plain, _ = _outputs(plain)
    engine = plain.require_prompt_engine()
    one_view = Predictor(engine.model, engine.record)
    p_flip = []
    for p in _clicks(plain):
        image = slice_array(engine.prepared(2), p.slice_index)
        one_view.set_image(np.ascontiguousarray(image[:, ::-1]), None, (0.0, 1.0))
        p_flip.append(one_view.predict(mirror_prompt(p, image.shape[1])).probabilities[:, ::-1])
    np.testing.assert_allclose(p_both, (p_plain + np.stack(p_flip)) / 2, atol=1e-5)
    assert not np.allclose(p_plain, np.stack(p_flip), atol=1e-3)  # the two views differ
    np.testing.assert_array_equal(m_both, p_both > 0.5)
    assert "--mirror" in _app_help()


def _app_help() -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["app", "--help"])
    return buf.getvalue()
