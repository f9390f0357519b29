"""Import layering (.importlinter): data -> model -> adapters -> training -> inference -> evaluation -> commands/salt_seg_apps,
adapter layers that know nothing of the registry or config, and no import cycles inside a subpackage.

``lint-imports`` runs in a subprocess: in-process it reconfigures logging (``dictConfig`` disables the existing
loggers), which would silence the ``caplog`` checks of later tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(config: Path, tree: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``tree`` (the repository, or a copy of it)."""
    args = [sys.executable, "-c", LINT, "--config", str(config), "--no-cache", "--no-logo"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(args, cwd=tree, capture_output=True, text=True, timeout=120, env=env)


def test_contracts_are_kept() -> None:
    run = lint_imports(CONFIG)
    out = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"an import breaks .importlinter (a lower layer imports a higher one, or a cycle):\n{out}"
    )
    assert "4 kept, 0 broken" in out, out


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The contract lists no exception; an upward import added to a copy of the tree must break it."""
    text = CONFIG.read_text()
    layers = text.split("[importlinter:contract:layers]")[1].split("[importlinter:contract:")[0]
    assert "ignore_imports" not in layers  # nothing points upward, not even a listed exception
    for pkg in ("salt_seg", "salt_seg_apps"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (tmp_path / "salt_seg" / "training" / "upward.py").write_text("from salt_seg.evaluation import summary\n")
    (tmp_path / ".importlinter").write_text(text)
    run = lint_imports(tmp_path / ".importlinter", tree=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "Layers: base -> data" in out and "BROKEN" in out, out
    assert "salt_seg.training.upward" in out and "salt_seg.evaluation.summary" in out, out
