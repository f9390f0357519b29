"""Writing the run directory (rank 0): preparing it, provenance, the config, metrics, leftovers of interrupted
writes. The format itself, and everything that reads it, is :mod:`salt_seg.runs`."""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from salt_seg.io import atomic_write_text
from salt_seg.runs import METRICS, RUN_MARKER, RunDirWriteError, is_run_dir

#: errors that mean "the run directory cannot take more data" rather than a bug
WRITE_ERRNOS = frozenset(
    e
    for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO)
    + (getattr(errno, "EDQUOT", None),)  # not on every platform
    if e
)


@contextlib.contextmanager
def writing(run_dir: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` from writing into ``run_dir`` (disk full, read-only, ...) into :class:`RunDirWriteError`.

    An error about a file outside the run directory (a dataset that cannot be read, say) passes through.
    """
    try:
        yield
    except RunDirWriteError:
        raise
    except OSError as exc:
        name = exc.filename
        inside = name is None or Path(os.path.abspath(name)).is_relative_to(os.path.abspath(run_dir))
        if exc.errno not in WRITE_ERRNOS or not inside:
            raise
        raise RunDirWriteError(exc.errno, exc.strerror or str(exc), str(name or run_dir), run_dir) from exc


def is_leftover(name: str) -> bool:
    """A temporary file or folder of an interrupted write (``.NAME.XXXXXXXX.tmp``, ``.tmp-step-N``, ``.trash-...``)."""
    return name.startswith(".") and (".tmp" in name or name.startswith(".trash-"))


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files and folders interrupted writes left in ``folder``."""

    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if is_leftover(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


def prepare_run_dir(path: Path, *, resume: bool, config: dict[str, Any] | None = None) -> None:
    """Create a fresh run directory and write its ``config.yaml`` first; never silently reuse a used one.

    A directory holding only the temporary files of an interrupted write counts as empty.

    Raises:
        FileExistsError: the directory exists and is not empty while not resuming (the message says whether it is
            a run, to continue with ``--resume``).
        FileNotFoundError: resuming a directory that is not a run.
    """
    if resume:
        if not is_run_dir(path):
            raise FileNotFoundError(f"{path}: not a run directory (no {RUN_MARKER}); nothing to resume")
        return
    if path.exists() and any(not is_leftover(p.name) for p in path.iterdir()):
        if is_run_dir(path):
            raise FileExistsError(
                f"{path}: is already a run directory; continue it with --resume {path}, or choose another --out"
            )
        raise FileExistsError(
            f"{path}: run directory exists and is not empty; choose another --out or use --resume"
        )
    path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    if config is not None:
        write_config(path, config)


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
    versions: dict[str, str | None] = {}
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


def append_metrics(path: Path, row: dict[str, Any]) -> int:
    """Append one row to ``metrics.jsonl`` (one ``write``); returns the file's length in bytes after it."""
    target = path / METRICS
    try:
        with open(target, "ab") as f:
            f.write((json.dumps(row) + "\n").encode())
            return f.tell()
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(target)
        raise


def metrics_size(path: Path) -> int:
    """Length of ``metrics.jsonl`` in bytes (0 when absent)."""
    f = path / METRICS
    return f.stat().st_size if f.exists() else 0


def sync_metrics(path: Path) -> None:
    """Flush ``metrics.jsonl`` to the disk (before a checkpoint records its length)."""
    f = path / METRICS
    if f.exists():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def truncate_metrics(path: Path, size: int) -> None:
    """Cut ``metrics.jsonl`` back to ``size`` bytes: the rows written after the checkpoint a run resumes from.

    Raises:
        ValueError: the file is shorter than ``size`` (it does not belong with that checkpoint).
    """
    f = path / METRICS
    have = metrics_size(path)
    if have < size:
        raise ValueError(
            f"{f}: {have} bytes, but the checkpoint was taken at {size}; the file was cut or replaced"
        )
    if not f.exists():
        f.touch()
    os.truncate(f, size)
