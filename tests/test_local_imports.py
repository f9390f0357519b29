"""Function-local imports are the exception, and each one says why (issue 15, point 8).

An import inside a function hides the dependency graph from readers and from import-linter's view at import time.
One is allowed only where it earns its place:

* in the command-line entry points (``salt_seg/cli.py``, ``__main__``, ``commands/``, ``demo.py``), so that
  ``salt-seg --help`` and the first line of the demo come before torch and MONAI load;
* for an optional or heavy dependency only some features use (DICOM-SEG/RTSTRUCT writers, ONNX Runtime, Gradio,
  matplotlib for plots, nilearn for dataset download ...): :data:`OPTIONAL`;
* inside a ``try`` block that turns a missing extra into a one-line error;
* with a comment on its line that says why (``# deferred: ...``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("salt_seg/cli.py", "salt_seg/__main__.py", "salt_seg/demo.py")
#: optional extras and heavy libraries that only some features need: imported where the feature runs
OPTIONAL = {
    "matplotlib": "plots only",
    "highdicom": "DICOM-SEG output",
    "pydicom": "DICOM input/output",
    "SimpleITK": "DICOM series reading",
    "rt_utils": "RTSTRUCT (extra)",
    "onnx": "export-onnx",
    "onnxruntime": "--backend onnx",
    "onnxscript": "export-onnx",
    "gradio": "the viewer",
    "nnunetv2": "the nnU-Net baseline",
    "monailabel": "the MONAI Label app",
    "pydicom_seg": "the MONAI Label app",
    "nilearn": "dataset download recipes",
    "skimage": "contours for RTSTRUCT",
    "PIL": "PNG overlays",
    "threadpoolctl": "data workers only",
    "segment_anything": "Meta checkpoints (imports torchvision)",
    "torchvision": "via segment_anything",
    "resource": "POSIX-only peak memory",
    "psutil": "optional memory figures",
}


def _local_imports(tree: ast.AST):
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            guarded.update(id(n) for n in ast.walk(node))
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for st in ast.walk(fn):
                if isinstance(st, ast.Import | ast.ImportFrom) and id(st) not in guarded:
                    yield st


def unexplained_local_imports(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / "salt_seg").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in ENTRY_POINTS or rel.startswith("salt_seg/commands/"):
            continue
        lines = path.read_text().splitlines()
        for st in _local_imports(ast.parse(path.read_text())):
            module = st.module if isinstance(st, ast.ImportFrom) else st.names[0].name
            if st.level == 0 if isinstance(st, ast.ImportFrom) else True:
                if (module or "").split(".")[0] in OPTIONAL:
                    continue
            if any("# deferred:" in line for line in lines[st.lineno - 1 : st.end_lineno]):
                continue
            found.append(f"{rel}:{st.lineno}: {ast.unparse(st)}")
    return found


def test_every_function_local_import_says_why() -> None:
    found = unexplained_local_imports()
    assert not found, (
        "function-local imports without a reason (hoist them, or say '# deferred: why'):\n" + "\n".join(found)
    )


def test_the_check_finds_an_unexplained_one(tmp_path: Path) -> None:
    pkg = tmp_path / "salt_seg" / "inference"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text(
        "def f():\n    import json\n    return json\n\n"
        "def g():\n    import matplotlib\n    return matplotlib\n\n"
        "def h():\n    import yaml  # deferred: only the config reader needs it\n    return yaml\n\n"
        "def k():\n    try:\n        import rt_utils2\n    except ImportError:\n        raise\n"
    )
    (tmp_path / "salt_seg" / "cli.py").write_text("def main():\n    import torch\n")
    assert unexplained_local_imports(tmp_path) == ["salt_seg/inference/m.py:2: import json"]


def test_help_loads_no_heavy_library() -> None:
    """What the deferred imports of the entry points buy: ``salt-seg --help`` imports neither torch nor numpy."""
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from salt_seg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'monai', 'scipy', 'nibabel') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
