"""The run directory format: what one training run leaves behind, and how everyone else reads it.

Training writes it (:mod:`salt_seg.training.rundir`, :mod:`salt_seg.training.checkpoints`); inference,
evaluation, the CLI and the viewer read it through this module only.

```
RUN_DIR/
  config.yaml            resolved experiment config (every default filled in); written first, it marks a run
  split.json             copy of the few-shot split (train / val / test)
  provenance.json        package versions, git commit, dataset content hash, seed, device, command line
  metrics.jsonl          one JSON object per logged step / validation
  adapter.safetensors    final adapter = best validation checkpoint (what predict / evaluate / the app load)
  base.safetensors       base weights, only when the base was randomly initialised (no checkpoint file)
  checkpoints/
    step-000040/         one checkpoint unit per kept step: the newest is `last`, its state names `best`
      adapter.safetensors   the adapter at that step (metadata extra: step, best_step)
      state.pt              optimizer, scheduler, scaler, RNG, step, best step/Dice, metrics.jsonl byte offset
    step-000050/
  plots/
    curves.png           training loss and validation Dice
    val_overlays.png     image | ground truth | prediction for a few validation slices
  summary.json           final metrics (validation best, test when evaluated), trainable parameters, time
```

A checkpoint is one unit: written into ``checkpoints/.tmp-step-N``, then published by one rename. Step 0 (the
untrained adapter) is the first unit and the first candidate for best, so every run that got past its initial
validation has a unit; one killed before resumes from step 0. Every file outside ``checkpoints/`` is replaced
atomically (temporary file + rename), except ``metrics.jsonl``, which is appended to and cut back to the offset of
the unit a run resumes from.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from salt_seg.adapters import read_adapter_metadata

#: the file whose presence makes a folder a run directory (written first)
RUN_MARKER = "config.yaml"
METRICS = "metrics.jsonl"
ADAPTER = "adapter.safetensors"
CHECKPOINTS = "checkpoints"
_UNIT = re.compile(r"^step-(\d{6,})$")


class RunDirWriteError(OSError):
    """Writing into the run directory failed (disk full, read-only, quota): the run stays resumable.

    ``str()`` is one line naming the path and the cause, what the CLI prints.
    """

    def __init__(self, errno_: int | None, strerror: str, filename: str, run_dir: str | Path | None) -> None:
        super().__init__(errno_, strerror, filename)
        self.run_dir = run_dir

    def __str__(self) -> str:
        if self.run_dir is not None and is_run_dir(self.run_dir):
            hint = f"; fix that, then continue with --resume {self.run_dir}"
        else:
            hint = ""
        return f"{self.filename}: cannot write ({self.strerror}){hint}"


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def checkpoints_folder(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def unit_path(run_dir: Path, step: int) -> Path:
    """The checkpoint unit of ``step``."""
    return checkpoints_folder(run_dir) / f"step-{step:06d}"


def published_steps(run_dir: Path) -> list[int]:
    """Steps of the published checkpoint units, ascending."""
    d = checkpoints_folder(run_dir)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _UNIT.match(p.name)) and p.is_dir())


def best_adapter(run_dir: Path) -> Path | None:
    """The best checkpoint's adapter file of an unfinished run (``None`` when it has no unit)."""

    steps = published_steps(run_dir)
    if not steps:
        legacy = [checkpoints_folder(run_dir) / k / ADAPTER for k in ("best", "last")]
        return next((p for p in legacy if p.is_file()), None)
    last = unit_path(run_dir, steps[-1]) / ADAPTER
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        best = unit_path(run_dir, int(read_adapter_metadata(last)["extra"]["best_step"])) / ADAPTER
        if best.is_file():
            return best
    return last if last.is_file() else None


def find_adapter(path: str | Path) -> Path:
    """The adapter file a run directory (or an adapter path) stands for.

    A finished run has ``adapter.safetensors``; an unfinished one stands for its best checkpoint so far.

    Raises:
        FileNotFoundError: neither an adapter file nor a run directory holding one.
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / ADAPTER).is_file():
            return p / ADAPTER
        found = best_adapter(p)
        if found is not None:
            return found
        raise FileNotFoundError(f"{p}: run directory holds no adapter.safetensors (did training finish?)")
    raise FileNotFoundError(f"{p}: no such run directory or adapter file")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (empty when absent)."""
    f = Path(path) / METRICS
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def run_dataset(run_dir: Path) -> tuple[str | None, str]:
    """``(data.path, data.format)`` from a run's ``config.yaml`` (``(None, "auto")`` where it names none).

    Raises:
        FileNotFoundError: the run has no ``config.yaml``.
    """
    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml to find the dataset (pass --data)")
    data_cfg = (yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}
    return data_cfg.get("path"), data_cfg.get("format", "auto")
