"""Training checkpoints that survive ``kill -9`` and a full disk: one unit per step, published by one rename.

A unit is the folder ``checkpoints/step-NNNNNN`` holding ``adapter.safetensors`` (the trainable tensors) and
``state.pt`` (:class:`TrainState`: optimizer, scheduler, scaler, RNG, step, best step and Dice, and
``metrics_bytes``, the length of ``metrics.jsonl`` when the unit was taken). It is written into
``checkpoints/.tmp-step-NNNNNN``, flushed to the disk, and renamed into place: a reader sees a whole unit or none.
Nothing else points at it:

- ``last`` is the unit with the highest step;
- ``best`` is the unit its state names (``best_step``); when a step improves on the best, its unit is both, so the
  best is always published together with (or before) the ``last`` that refers to it.

Superseded units (neither the new last nor its best) are deleted only after the new unit is published, each first
renamed to a ``.trash-`` folder so that no half-deleted unit is ever visible. Resuming checks that the last unit is
whole and consistent (:func:`load_last`) and cuts ``metrics.jsonl`` back to its offset.

Fault injection, for tests: ``SALT_SEG_FAULT=POINT[:N[:ACTION]]`` makes the process, at its ``N``-th (default
first) arrival at ``POINT``, either ``kill`` itself with ``SIGKILL`` (default) or raise ``enospc`` (an ``OSError``
"No space left on device" naming the file being written). Points inside a unit's write: ``unit-adapter-start``
(empty temporary folder), ``unit-adapter`` (adapter written), ``unit-state-half`` (half of ``state.pt`` written),
``unit-state`` (both files written), ``unit-written`` (whole and flushed, not yet published); after it:
``unit-published`` (published, superseded units not yet deleted: the old last and the new best both exist),
``unit-pruned`` (the write is over). In the loop: ``configured``, ``base-written``, ``initial-validation`` (before
the first unit), ``step`` (the start of each training step), ``exported`` (final adapter written, summary not yet).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salt_seg import runs
from salt_seg.adapters import read_adapter_metadata
from salt_seg.io import fsync_dir, write_durable
from salt_seg.runs import checkpoints_folder, published_steps, unit_path
from salt_seg.training import rundir as rd

log = logging.getLogger(__name__)

FAULT_ENV = "SALT_SEG_FAULT"
STATE_FORMAT = 2  # 1: the checkpoints/{best,last}/ folders of salt_seg before units
_arrivals: dict[str, int] = {}


def fault(point: str, path: str | Path | None = None, before: Any = None) -> None:
    """The fault-injection hook (see the module docstring); does nothing unless ``SALT_SEG_FAULT`` names ``point``.

    ``before`` (a callable) runs just before the fault: a half-written file, for instance.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    count, _, action = rest.partition(":")
    _arrivals[point] = _arrivals.get(point, 0) + 1
    if _arrivals[point] != int(count or 1):
        return
    if before is not None:
        before()
    if (action or "kill") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path is not None else None)
    else:
        raise ValueError(f"{FAULT_ENV}={spec!r}: unknown action {action!r} (kill or enospc)")


@dataclass
class TrainState:
    """The resume state of a training run: what a unit's ``state.pt`` holds (:meth:`to_dict`) and what ``--resume``
    reads back (:meth:`from_dict`).

    The training loop keeps its counters here; the optimizer, scheduler and scaler state dicts and torch's RNG state
    are filled in when a unit is taken (empty in between).
    """

    step: int = 0
    best_val_dice: float = math.nan
    best_step: int = 0
    bad_validations: int = 0  # validations in a row without improvement (``train.early_stop``)
    initial_val_dice: float = math.nan  # the untrained adapter's, at step 0
    seconds: float = 0.0  # training time so far, all segments of a resumed run together
    metrics_bytes: int = 0  # metrics.jsonl's length at this step: a resumed run cuts it back to this
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)  # empty without fp16 gradient scaling
    torch_rng: torch.Tensor | None = None
    #: under ``train.ema_decay`` the unit's adapter holds the moving average; these are the raw trained tensors
    raw_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What ``state.pt`` holds (format :data:`STATE_FORMAT`; plain types and tensors, so that it loads under
        ``torch.load(weights_only=True)``)."""
        return {
            "format": STATE_FORMAT,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "step": self.step,
            "best_val_dice": self.best_val_dice,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
            "initial_val_dice": self.initial_val_dice,
            "torch_rng": self.torch_rng,
            "seconds": self.seconds,
            "metrics_bytes": self.metrics_bytes,
            **({"raw_weights": self.raw_weights} if self.raw_weights else {}),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        """The state of a ``state.pt`` (:func:`load_last` checked its format); ``seconds`` is 0 in units written
        before it was recorded."""
        return cls(
            step=int(state["step"]),
            best_val_dice=float(state["best_val_dice"]),
            best_step=int(state["best_step"]),
            bad_validations=int(state["bad_validations"]),
            initial_val_dice=float(state["initial_val_dice"]),
            seconds=float(state.get("seconds", 0.0)),
            metrics_bytes=int(state["metrics_bytes"]),
            optimizer=state["optimizer"],
            scheduler=state["scheduler"],
            scaler=state["scaler"] or {},
            torch_rng=state["torch_rng"],
            raw_weights=state.get("raw_weights") or {},
        )


@dataclass
class Unit:
    """A published checkpoint unit."""

    path: Path
    step: int
    state: dict[str, Any]  # state.pt as read; :attr:`train_state` is its typed form

    @property
    def adapter(self) -> Path:
        return self.path / "adapter.safetensors"

    @property
    def train_state(self) -> TrainState:
        return TrainState.from_dict(self.state)


def write_unit(run_dir: Path, step: int, adapter_bytes: bytes, state: dict[str, Any]) -> Path:
    """Write and publish the unit of ``step``, then delete the units it supersedes.

    ``state`` must hold ``step`` (= ``step``), ``best_step`` (a published unit, or ``step`` itself) and
    ``metrics_bytes``. Rank 0 only.

    Raises:
        OSError: writing failed (the unit is not published; the temporary folder is removed when possible).
    """
    assert state["step"] == step and "best_step" in state and "metrics_bytes" in state
    ck = checkpoints_folder(run_dir)
    ck.mkdir(parents=True, exist_ok=True)
    rd.sync_metrics(run_dir)  # the offset the unit records must be on the disk before the unit is
    tmp = ck / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        buf = io.BytesIO()
        torch.save(state, buf)
        fault("unit-adapter-start", tmp / "adapter.safetensors")
        write_durable(tmp / "adapter.safetensors", adapter_bytes)
        fault("unit-adapter", tmp / "state.pt")
        data = buf.getvalue()
        half = lambda: (tmp / "state.pt").write_bytes(data[: len(data) // 2])  # noqa: E731
        fault("unit-state-half", tmp / "state.pt", before=half)
        write_durable(tmp / "state.pt", data)
        fault("unit-state", tmp)
        fsync_dir(tmp)
        fault("unit-written", tmp)
        final = unit_path(run_dir, step)
        if final.exists():  # cannot happen for a run resumed from its last unit; never rename onto a unit
            final.rename(ck / f".trash-{final.name}-{os.getpid()}")
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(ck)
    fault("unit-published", final)
    prune(run_dir, keep={step, int(state["best_step"])})
    fault("unit-pruned", final)
    return final


def prune(run_dir: Path, keep: set[int]) -> None:
    """Delete the units not in ``keep`` and the leftovers of interrupted writes (renamed away before deletion)."""
    ck = checkpoints_folder(run_dir)
    for s in published_steps(run_dir):
        if s not in keep:
            p = unit_path(run_dir, s)
            with contextlib.suppress(OSError):
                p.rename(ck / f".trash-{p.name}-{os.getpid()}")
    rd.remove_leftovers(ck)


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: damaged checkpoint ({why}); it was not written by an interrupted salt_seg run"
    )


def _read_unit(run_dir: Path, step: int) -> Unit:

    path = unit_path(run_dir, step)
    for name in ("adapter.safetensors", "state.pt"):
        if not (path / name).is_file():
            raise _damaged(path, f"no {name}")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        meta = read_adapter_metadata(path / "adapter.safetensors")
    except Exception as exc:  # noqa: BLE001 - any reader error means the same thing here
        raise _damaged(path, f"unreadable: {exc}") from None
    if state.get("format") != STATE_FORMAT:
        raise _damaged(path, f"state format {state.get('format')!r}, expected {STATE_FORMAT}")
    if int(state["step"]) != step or int(meta["extra"].get("step", -1)) != step:
        raise _damaged(path, f"state step {state['step']}, adapter step {meta['extra'].get('step')}")
    return Unit(path, step, state)


def load_last(run_dir: Path) -> Unit | None:
    """The last unit of a run, checked whole and consistent; ``None`` when the run has none (resume at step 0).

    Checks: both files present and readable, the state's and the adapter's step equal the folder's, the best unit
    it names is published with that step, and ``metrics.jsonl`` reaches the recorded offset, where a row of that
    step ends.

    Raises:
        ValueError: a damaged unit, or a run written by a salt_seg before units (``checkpoints/last/``).
    """
    steps = published_steps(run_dir)
    if not steps:
        if (checkpoints_folder(run_dir) / "last").is_dir():
            raise ValueError(
                f"{checkpoints_folder(run_dir) / 'last'}: a checkpoint of an older salt_seg (before checkpoint units); "
                "resume it with that version"
            )
        return None
    unit = _read_unit(run_dir, steps[-1])
    best_step = int(unit.state["best_step"])
    if best_step != unit.step:
        if best_step not in steps:
            raise _damaged(unit.path, f"its best checkpoint step-{best_step:06d} is missing")
        _read_unit(run_dir, best_step)
    offset = int(unit.state["metrics_bytes"])
    metrics = Path(run_dir) / runs.METRICS
    have = rd.metrics_size(run_dir)
    if have < offset:
        raise _damaged(unit.path, f"{metrics} has {have} bytes, the checkpoint was taken at {offset}")
    with open(metrics, "rb") as f:
        head = f.read(offset)
    rows = head.decode().splitlines()

    if not head.endswith(b"\n") or not rows or json.loads(rows[-1]).get("step") != unit.step:
        raise _damaged(unit.path, f"{metrics} does not end a row of step {unit.step} at byte {offset}")
    return unit
