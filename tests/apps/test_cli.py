"""``salt-seg app``: registration, argument checks, safe defaults, no heavy imports at module level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from salt_seg.cli import COMMANDS, main


def test_app_is_registered_and_help_is_instant(capsys: pytest.CaptureFixture[str]) -> None:
    assert COMMANDS["app"] == "salt_seg.commands.app"
    with pytest.raises(SystemExit) as exc:
        main(["app", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--port", "--host", "--max-upload-mb", "PATH"):
        assert flag in out
    code = "import sys, salt_seg.cli, salt_seg.commands.app; print(sorted(m for m in ('apps', 'gradio', 'torch') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["app", "/no/such/volume.nii.gz"], "/no/such/volume.nii.gz: no such file or folder"),
        (["app", "--port", "70000"], "--port must be in 1..65535, got 70000"),
        (["app", "--max-upload-mb", "0"], "--max-upload-mb must be >= 1, got 0"),
        (["app", "--memory-budget-mb", "0"], "--memory-budget-mb must be >= 1, got 0"),
        (["app", "--idle-minutes", "0"], "--idle-minutes must be > 0, got 0.0"),
        (["app", "--no-builtin"], "--no-builtin needs --model RUN_OR_ADAPTER or --library DIR"),
        (
            ["app", "--library", "/no/such/lib"],
            "/no/such/lib: not an adapter library (no index.json; see salt-seg library)",
        ),
        (["app", "--model", "/no/such/run"], "/no/such/run: no such run directory or adapter file"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"salt-seg app: error: {message}"


def test_run_starts_the_viewer_with_safe_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import salt_seg_apps.viewer.app as app_module

    seen = {}

    class FakeApp:
        def __init__(self, config):
            seen["config"] = config
            self.demo = type("D", (), {"block_thread": staticmethod(lambda: None)})()

        def launch(self, prevent_thread_lock=False):
            seen["launch"] = prevent_thread_lock
            return "http://127.0.0.1:7860/"

        def close(self):
            seen["closed"] = True

    monkeypatch.setattr(app_module, "ViewerApp", FakeApp)
    vol = tmp_path / "v.nii.gz"
    vol.write_bytes(b"x")
    assert main(["app", str(vol), "--max-upload-mb", "64", "--device", "cpu"]) == 0
    c = seen["config"]
    assert (c.path, c.model, c.host, c.port, c.max_upload_mb, c.device, c.builtin) == (
        str(vol),
        None,
        "127.0.0.1",
        None,
        64,
        "cpu",
        True,
    )
    assert seen["closed"] is True
    assert (c.memory_budget_mb, c.idle_timeout_s) == (8192, 4 * 3600.0)  # the viewer's own defaults
    assert (
        main(["app", str(vol), "--memory-budget-mb", "512", "--idle-minutes", "30", "--device", "cpu"]) == 0
    )
    assert (seen["config"].memory_budget_mb, seen["config"].idle_timeout_s) == (512, 1800.0)


def test_launch_defaults_bind_loopback_cap_uploads_and_grant_no_paths() -> None:
    from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
    from salt_seg_apps.viewer.engine import ModelRegistry
    from tests.apps.conftest import oracle_loaded

    app = ViewerApp(ViewerConfig(max_upload_mb=7), ModelRegistry({"oracle": oracle_loaded}))
    try:
        kw = app.launch_kwargs()
        assert kw["server_name"] == "127.0.0.1" and kw["max_file_size"] == "7mb" and kw["share"] is False
        assert "allowed_paths" not in kw and app.demo.analytics_enabled is False
        assert app.policy.max_bytes == 7 * 1024**2 and app.policy.roots
    finally:
        app.close()
