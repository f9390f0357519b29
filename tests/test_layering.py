"""Import layering (.importlinter): data -> model -> adapters -> training -> inference -> evaluation -> commands/salt_seg_apps,
adapter layers that know nothing of the registry or config, and no import cycles inside a subpackage.

``lint-imports`` runs in a subprocess: in-process it reconfigures logging (``dictConfig`` disables the existing
loggers), which would silence the ``caplog`` checks of later tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
UPWARD = "salt_seg.training.loop -> salt_seg.evaluation.ceiling"
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", LINT, "--config", str(config), "--no-cache", "--no-logo"]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_contracts_are_kept() -> None:
    run = lint_imports(CONFIG)
    out = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"an import breaks .importlinter (a lower layer imports a higher one, or a cycle):\n{out}"
    )
    assert "4 kept, 0 broken" in out, out


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The one listed exception is a function-local upward import: without it the contract must fail."""
    text = CONFIG.read_text()
    assert f"    {UPWARD}\n" in text
    config = tmp_path / ".importlinter"
    config.write_text(text.replace(f"    {UPWARD}\n", ""))
    run = lint_imports(config)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "Layers: base -> data" in out and "BROKEN" in out, out
    assert "salt_seg.training.loop" in out and "salt_seg.evaluation.ceiling" in out, out
