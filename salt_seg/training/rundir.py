"""The run directory: everything one training run leaves behind, written atomically by rank 0.

```
RUN_DIR/
  config.yaml            resolved experiment config (every default filled in)
  split.json             copy of the few-shot split (train / val / test)
  provenance.json        package versions, git commit, dataset content hash, seed, device, command line
  metrics.jsonl          one JSON object per logged step / validation
  adapter.safetensors    final adapter = best validation checkpoint (what predict / evaluate / the app load)
  base.safetensors       base weights, only when the base was randomly initialised (no checkpoint file)
  checkpoints/
    best/adapter.safetensors, best/state.pt
    last/adapter.safetensors, last/state.pt     state.pt: optimizer, scheduler, scaler, RNG states, step
  plots/
    curves.png           training loss and validation Dice
    val_overlays.png     image | ground truth | prediction for a few validation slices
  summary.json           final metrics (validation best, test when evaluated), trainable parameters, time
```
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

RUN_MARKER = "config.yaml"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def find_adapter(path: str | Path) -> Path:
    """The adapter file a run directory (or an adapter path) stands for.

    Raises:
        FileNotFoundError: neither an adapter file nor a run directory holding one.
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (
            p / "adapter.safetensors",
            p / "checkpoints" / "best" / "adapter.safetensors",
            p / "checkpoints" / "last" / "adapter.safetensors",
        ):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{p}: run directory holds no adapter.safetensors (did training finish?)")
    raise FileNotFoundError(f"{p}: no such run directory or adapter file")


def prepare_run_dir(path: Path, *, resume: bool) -> None:
    """Create a fresh run directory; never silently reuse a used one.

    Raises:
        FileExistsError: the directory exists and is not empty while not resuming.
        FileNotFoundError: resuming a directory that is not a run.
    """
    if resume:
        if not is_run_dir(path):
            raise FileNotFoundError(f"{path}: not a run directory (no {RUN_MARKER}); nothing to resume")
        return
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"{path}: run directory exists and is not empty; choose another --out or use --resume"
        )
    path.mkdir(parents=True, exist_ok=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(extra: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "salt-seg",
        "torch",
        "segment-anything",
        "monai",
        "numpy",
        "nibabel",
        "SimpleITK",
        "safetensors",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "argv": sys.argv,
        **extra,
    }


def write_config(path: Path, cfg_dict: dict[str, Any]) -> None:
    atomic_write_text(path / RUN_MARKER, yaml.safe_dump(cfg_dict, sort_keys=False))


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    f = path / "metrics.jsonl"
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def load_yaml_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load((path / RUN_MARKER).read_text())


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows past ``step`` (written after the last checkpoint of an interrupted run)."""
    rows = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    atomic_write_text(path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
