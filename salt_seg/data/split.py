"""Few-shot splits: ``shots`` training volumes or slices, chosen deterministically from a seed.

Two levels:

* ``volume``: whole cases (3-D volumes or 2-D images) go to train, val or test. A dataset's own split hints
  (SALT's ``data_split.csv``) are honoured when every case has one; otherwise cases are shuffled with the seed,
  ``test`` and ``val`` are taken first, and ``shots`` training cases come from the rest.
* ``slice``: for datasets with few volumes (one atlas...). In each case the slice range that holds labelled
  structures (along ``axis`` of the RAS volume) is cut into three contiguous blocks, one per part, in an order
  drawn from the seed, separated by gaps so that **any two slices of different parts are at least
  ``guard_mm`` apart** (neighbouring 1 mm slices are nearly identical, so a test slice next to a training slice
  would measure memory, not generalisation). Training slices are ``shots`` labelled slices drawn from the
  training block, one per equal-width stratum so they cover it; val and test keep every slice of their blocks.
  This is the ``block`` protocol (the default): it measures *extrapolation* to an unseen part of the anatomy.

Slice-level splits follow one of two protocols (:data:`PROTOCOLS`):

* ``block`` (above): contiguous train / val / test blocks.
* ``sparse``: the user who labels every n-th slice and wants the rest (*interpolation*). The ``k`` training
  slices of a case lie evenly spaced through its labelled range (``k`` equal strata of width ``L / k`` slices,
  one slice per stratum at the same seeded offset, so neighbouring training slices are ``floor(L / k)`` or
  ``ceil(L / k)`` slices apart). Val and test slices come from the *gaps between* consecutive training slices,
  only where a slice is at least ``guard_mm`` from every training slice; slices beyond the first and last
  training slice are extrapolation and are left out. The gaps of all cases (case order, then position) are
  dealt to val or test whole: ``round(G * val / (val + test))`` of the ``G`` gaps with room go to val at evenly
  spaced positions with a seeded offset, the rest to test, so val and test alternate and any val slice is a
  training slice (and twice the guard) away from any test slice. Each part then keeps ``round(fraction * L)``
  of its eligible slices (summed over cases), evenly spread; when the guard leaves fewer, it keeps all of them
  (the counts are "as far as possible"). The default ``guard_mm`` of 10 mm applies here too; with ``k``
  training slices over ``D`` mm the gaps are ``D / k`` mm wide, so the guard must stay below ``D / (2k)`` mm
  (the error says so and names the fix).

Every slice-level split checks that its training slices hold each class its val and test slices hold (the per-slice
classes come from :mod:`salt_seg.data.slice_info`); when not (an atlas label confined to one height or one hemisphere,
split along the wrong axis) it warns, names the axis whose split would train on every class, and records the classes
in ``meta["classes_missing_from_train"]``. Errors and warnings name settings in the caller's words
(:class:`SplitTerms`: ``--guard-mm`` for ``salt-seg data split``, ``data.guard_mm`` for ``train``).

The split is a JSON file (:func:`save_split`/:func:`load_split`) whose parts list ``{"case": id, "slices":
[...]}`` entries (``slices`` is ``null`` for whole volumes). Slice indices refer to the RAS-canonical volume
(:meth:`salt_seg.data.volume.Volume.to_ras`), as everywhere in the pipeline.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.errors import DataError
from salt_seg.data.slice_info import (
    SliceInfo,
    classes_missing_from_train,
    part_classes,
    read_slice_infos,
)
from salt_seg.data.slice_info import slice_info_from_dataset as slice_info_from_dataset
from salt_seg.io import atomic_write_text

log = logging.getLogger(__name__)

SPLIT_VERSION = 1
PARTS = ("train", "val", "test")
LEVELS = ("volume", "slice")
#: slice-level split protocols: contiguous blocks (extrapolation) or training slices spread evenly (interpolation).
PROTOCOLS = ("block", "sparse")
#: what slices along each RAS axis are called (in warnings)
AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


@dataclass(frozen=True)
class SplitTerms:
    """How the caller's user spells :func:`make_split`'s settings, so that errors and warnings name what they typed.

    The library's own argument names are the default (a Python caller); ``salt-seg data split`` passes its flags
    (``--guard-mm 4``) and ``salt-seg train`` its config keys (``data.guard_mm: 4``).

    Attributes:
        names: argument name -> the user's word for it (``guard_mm`` -> ``--guard-mm``); others keep their name.
        form: how a setting is written, with ``{name}`` and ``{value}``.
        values: per argument, value -> the user's spelling of it (``level``: ``volume`` -> ``volumes``).
    """

    names: Mapping[str, str] = field(default_factory=dict)
    form: str = "{name}={value!r}"
    values: Mapping[str, Mapping[Any, Any]] = field(default_factory=dict)

    def name(self, arg: str) -> str:
        return self.names.get(arg, arg)

    def setting(self, arg: str, value: Any) -> str:
        value = self.values.get(arg, {}).get(value, value)
        return self.form.format(name=self.name(arg), value=value)


PYTHON_TERMS = SplitTerms()


@dataclass
class SplitEntry:
    """One case in a part: the whole case (``slices is None``) or some of its slice indices."""

    case_id: str
    slices: list[int] | None = None


@dataclass
class Split:
    """A train/val/test split.

    Attributes:
        level: ``volume`` or ``slice``.
        shots: number of training volumes (volume level) or slices (slice level).
        seed: the seed it was drawn with.
        axis: slice axis (RAS volume) the slice indices refer to.
        guard_mm: minimum distance between slices of different parts (slice level), else ``None``.
        train: training entries.
        val: validation entries.
        test: test entries.
        dataset: the dataset's name.
        meta: anything else worth recording (fractions, ...).
        protocol: slice level: ``block`` or ``sparse`` (module docstring); ``block`` for volume-level splits
            and for split files written before protocols existed.
    """

    level: str
    shots: int
    seed: int
    axis: int = 2
    guard_mm: float | None = None
    train: list[SplitEntry] = field(default_factory=list)
    val: list[SplitEntry] = field(default_factory=list)
    test: list[SplitEntry] = field(default_factory=list)
    dataset: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    protocol: str = "block"

    def part(self, name: str) -> list[SplitEntry]:
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; valid: {list(PARTS)}")
        return getattr(self, name)

    def slices(self, name: str) -> dict[str, list[int] | None]:
        """``case_id -> slice indices`` (``None`` = every slice) of a part."""
        return {e.case_id: (None if e.slices is None else list(e.slices)) for e in self.part(name)}

    def contains(self, name: str, case_id: str, slice_index: int | None = None) -> bool:
        """Whether a case (and slice) belongs to a part; ``evaluate`` restricts scoring with this."""
        for e in self.part(name):
            if e.case_id == case_id:
                return e.slices is None or slice_index is None or slice_index in e.slices
        return False

    def min_distance_mm(self, spacing_mm: Mapping[str, float]) -> float:
        """Smallest distance between two slices of different parts of the same case (``inf`` if none)."""
        best = math.inf
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            sa, sb = self.slices(a), self.slices(b)
            for case in set(sa) & set(sb):
                if sa[case] is None or sb[case] is None:
                    return 0.0
                if sa[case] and sb[case]:
                    ia, ib = np.asarray(sa[case]), np.asarray(sb[case])
                    d = np.abs(ia[:, None] - ib[None, :]).min() * spacing_mm[case]
                    best = min(best, float(d))
        return best

    def to_dict(self) -> dict[str, Any]:
        def entries(items: list[SplitEntry]) -> list[dict[str, Any]]:
            return [{"case": e.case_id, "slices": e.slices} for e in items]

        return {
            "version": SPLIT_VERSION,
            "kind": "salt_seg.split",
            "dataset": self.dataset,
            "level": self.level,
            "shots": self.shots,
            "seed": self.seed,
            "axis": self.axis,
            "guard_mm": self.guard_mm,
            "protocol": self.protocol,
            "train": entries(self.train),
            "val": entries(self.val),
            "test": entries(self.test),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | Path | None = None) -> Split:
        if d.get("kind") != "salt_seg.split":
            raise DataError(path, "not a salt_seg split file (missing kind 'salt_seg.split')")
        if int(d.get("version", 0)) > SPLIT_VERSION:
            raise DataError(
                path, f"split version {d['version']} is newer than this salt_seg ({SPLIT_VERSION})"
            )
        if d.get("level") not in LEVELS:
            raise DataError(path, f"split level must be one of {list(LEVELS)}, got {d.get('level')!r}")
        protocol = d.get("protocol") or "block"  # files written before protocols existed are block splits
        if protocol not in PROTOCOLS:
            raise DataError(path, f"split protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        parts = {}
        for name in PARTS:
            try:
                parts[name] = [
                    SplitEntry(
                        str(e["case"]), None if e.get("slices") is None else [int(i) for i in e["slices"]]
                    )
                    for e in d.get(name, [])
                ]
            except (KeyError, TypeError, ValueError):
                raise DataError(path, f"malformed entries in part {name!r}") from None
        return cls(
            level=d["level"],
            shots=int(d.get("shots", 0)),
            seed=int(d.get("seed", 0)),
            axis=int(d.get("axis", 2)),
            guard_mm=d.get("guard_mm"),
            dataset=str(d.get("dataset", "")),
            meta=dict(d.get("meta", {})),
            protocol=protocol,
            **parts,
        )


def save_split(split: Split, path: str | Path) -> Path:
    """Write a split JSON file atomically."""
    return atomic_write_text(path, json.dumps(split.to_dict(), indent=1))


def load_split(path: str | Path) -> Split:
    """Read a split JSON file.

    Raises:
        DataError: unreadable, not JSON, or not a split.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable split file ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(path, "not a split file (expected a JSON object)")
    return Split.from_dict(doc, path)


def _count(value: int | float, n: int, name: str, t: SplitTerms = PYTHON_TERMS) -> int:
    if isinstance(value, float) and not isinstance(value, bool):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{t.name(name)} fraction must be in [0, 1), got {value}")
        return 0 if value == 0 else max(1, round(value * n))
    if int(value) < 0:
        raise ValueError(f"{t.name(name)} must be >= 0, got {value}")
    return int(value)


def _volume_split(
    ids: list[str],
    hints: dict[str, str | None],
    shots: int,
    seed: int,
    val: int | float,
    test: int | float,
    t: SplitTerms = PYTHON_TERMS,
) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    if ids and all(hints.get(i) for i in ids):
        pool = [i for i in ids if hints[i] == "train"]
        val_ids = [i for i in ids if hints[i] == "val"]
        test_ids = [i for i in ids if hints[i] == "test"]
        pool = [pool[k] for k in rng.permutation(len(pool))]
    else:
        perm = [ids[k] for k in rng.permutation(len(ids))]
        n_test, n_val = _count(test, len(ids), "test", t), _count(val, len(ids), "val", t)
        test_ids, val_ids, pool = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    if shots > len(pool):
        # a one-atlas dataset ends here: its single volume cannot be train, val and test at once
        raise ValueError(
            f"cannot draw {shots} training case(s) ({t.setting('shots', shots)}): only {len(pool)} of "
            f"{len(ids)} labelled case(s) are left after val and test; lower {t.name('shots')}, {t.name('val')} "
            f"or {t.name('test')}, or hold out slices instead of whole volumes ({t.setting('level', 'slice')})"
        )
    return sorted(pool[:shots]), sorted(val_ids), sorted(test_ids)


def _zones(
    info: SliceInfo,
    case_id: str,
    order: list[str],
    val: float,
    test: float,
    guard_mm: float,
    need_train: int,
    t: SplitTerms = PYTHON_TERMS,
) -> dict[str, list[int]]:
    """Contiguous blocks per part inside the labelled range, ``guard_mm`` apart."""
    if not info.foreground:
        raise DataError(None, f"case {case_id}: no labelled slices along the split axis")
    lo, hi = min(info.foreground), max(info.foreground)
    step = max(1, math.ceil(guard_mm / info.spacing_mm - 1e-9))  # min index difference between parts
    parts = [p for p in order if p != "val" or val > 0]
    usable = (hi - lo + 1) - (len(parts) - 1) * (step - 1)
    sizes = {"test": max(1, round(test * usable)), "val": max(1, round(val * usable)) if val > 0 else 0}
    sizes["train"] = usable - sizes["test"] - sizes["val"]
    if sizes["train"] < max(1, need_train):
        raise DataError(
            None,
            f"case {case_id}: {hi - lo + 1} labelled slices at {info.spacing_mm:g} mm cannot "
            f"hold train ({need_train} shots), val and test blocks {guard_mm:g} mm apart; lower "
            f"{t.name('guard_mm')}, {t.name('val')} or {t.name('test')}, or split whole volumes "
            f"({t.setting('level', 'volume')})",
        )
    zones, start = {}, lo
    for p in parts:
        zones[p] = list(range(start, start + sizes[p]))
        start += sizes[p] + step - 1
    zones.setdefault("val", [])
    return zones


def _block_parts(
    ids: list[str],
    slice_info: Mapping[str, SliceInfo],
    quota: Mapping[str, int],
    val: float,
    test: float,
    guard_mm: float,
    rng: np.random.Generator,
    terms: SplitTerms = PYTHON_TERMS,
) -> dict[str, list[SplitEntry]]:
    """Contiguous train/val/test blocks per case in a seeded order; shots drawn one per training stratum."""
    parts: dict[str, list[SplitEntry]] = {p: [] for p in PARTS}
    for case_id in ids:
        info = slice_info[case_id]
        order = [PARTS[k] for k in rng.permutation(3)]
        zones = _zones(info, case_id, order, val, test, guard_mm, quota[case_id], terms)
        fg = set(info.foreground)
        labelled_train = [s for s in zones["train"] if s in fg]
        if len(labelled_train) < quota[case_id]:
            raise DataError(
                None,
                f"case {case_id}: only {len(labelled_train)} labelled slices in its training "
                f"block for {quota[case_id]} shots; lower {terms.name('shots')}",
            )
        chosen = []
        for stratum in np.array_split(np.asarray(labelled_train), quota[case_id]) if quota[case_id] else []:
            chosen.append(int(stratum[rng.integers(len(stratum))]))
        if chosen:
            parts["train"].append(SplitEntry(case_id, sorted(chosen)))
        for p in ("val", "test"):
            if zones[p]:
                parts[p].append(SplitEntry(case_id, zones[p]))
    return parts


def _spread(n: int, pool_size: int) -> list[int]:
    """``n`` evenly spread positions in ``range(pool_size)``: the centres of ``n`` equal strata (``n <= pool_size``)."""
    return [int((i + 0.5) * pool_size / n) for i in range(n)]


def _sparse_train(
    info: SliceInfo, case_id: str, k: int, rng: np.random.Generator, terms: SplitTerms = PYTHON_TERMS
) -> list[int]:
    """``k`` labelled slices evenly spaced through the labelled range, at a seeded offset."""
    if not info.foreground:
        raise DataError(None, f"case {case_id}: no labelled slices along the split axis")
    fg = np.asarray(info.foreground)
    if k > fg.size:
        raise DataError(
            None, f"case {case_id}: only {fg.size} labelled slices for {k} shots; lower {terms.name('shots')}"
        )
    lo, length = int(fg.min()), int(fg.max() - fg.min() + 1)
    width = length / k  # >= 1 slice, so the targets below are distinct
    phase = float(rng.uniform(0.0, width))
    chosen: list[int] = []
    for i in range(k):
        target = lo + math.floor(phase + i * width)
        free = fg[~np.isin(fg, chosen)]  # snap to a labelled slice (label maps may skip slices)
        chosen.append(int(free[np.argmin(np.abs(free - target))]))
    return sorted(chosen)


def _sparse_parts(
    ids: list[str],
    slice_info: Mapping[str, SliceInfo],
    quota: Mapping[str, int],
    val: float,
    test: float,
    guard_mm: float,
    rng: np.random.Generator,
    terms: SplitTerms = PYTHON_TERMS,
) -> dict[str, list[SplitEntry]]:
    """Train slices spread evenly per case; val and test dealt whole gaps between them (module docstring)."""
    train: dict[str, list[int]] = {}
    gaps: list[tuple[str, list[int]]] = []  # (case, slices of one gap far enough from training slices)
    widths_mm: list[float] = []  # per gap: the largest guard it could leave room under
    targets = {"val": 0, "test": 0}
    for case_id in ids:
        if quota[case_id] == 0:
            continue
        info = slice_info[case_id]
        train[case_id] = _sparse_train(info, case_id, quota[case_id], rng, terms)
        length = max(info.foreground) - min(info.foreground) + 1
        for name, frac in (("val", val), ("test", test)):
            targets[name] += max(1, round(frac * length)) if frac > 0 else 0
        step = max(1, math.ceil(guard_mm / info.spacing_mm - 1e-9))  # min index distance to a training slice
        for a, b in zip(train[case_id], train[case_id][1:], strict=False):
            gaps.append((case_id, list(range(a + step, b - step + 1))))
            widths_mm.append((b - a) // 2 * info.spacing_mm)
    room = [g for g in gaps if g[1]]
    needed = int(val > 0) + int(test > 0)
    if len(gaps) < needed:
        raise DataError(
            None,
            f"sparse split: {sum(quota.values())} training slice(s) over {len(ids)} case(s) leave "
            f"{len(gaps)} gap(s) between training slices, and val and test need {needed} (shots are dealt "
            f"round-robin over the cases; a case needs 2 for a gap): raise {terms.name('shots')}, or use "
            f"{terms.setting('protocol', 'block')}",
        )
    if len(room) < needed:
        fits = sorted(widths_mm, reverse=True)[needed - 1]
        hint = f"lower {terms.name('guard_mm')} to {fits:g} or less, " if fits > 0 else ""
        raise DataError(
            None,
            f"sparse split: {sum(quota.values())} training slice(s) leave {len(room)} gap(s) with a slice "
            f"{guard_mm:g} mm from every training slice, and val and test need {needed}; {hint}"
            f"lower {terms.name('shots')}, or use {terms.setting('protocol', 'block')}",
        )
    n_val_gaps = round(len(room) * val / (val + test)) if val + test > 0 else 0
    n_val_gaps = min(max(n_val_gaps, int(val > 0)), len(room) - int(test > 0))
    offset = float(rng.uniform())  # which gaps go to val: evenly spaced, at a seeded offset
    val_gaps = {math.floor((m + offset) * len(room) / n_val_gaps) for m in range(n_val_gaps)}
    pools: dict[str, list[tuple[str, int]]] = {"val": [], "test": []}
    for g, (case_id, slices) in enumerate(room):
        pools["val" if g in val_gaps else "test"].extend((case_id, s) for s in slices)
    parts: dict[str, list[SplitEntry]] = {p: [] for p in PARTS}
    parts["train"] = [SplitEntry(c, t) for c, t in train.items()]
    for name, pool in pools.items():
        keep = [pool[i] for i in _spread(min(targets[name], len(pool)), len(pool))]
        for case_id in ids:
            slices = sorted(s for c, s in keep if c == case_id)
            if slices:
                parts[name].append(SplitEntry(case_id, slices))
    return parts


def make_split(
    dataset: Any,
    *,
    shots: int,
    seed: int = 0,
    level: str = "volume",
    val: int | float = 0.2,
    test: int | float = 0.4,
    guard_mm: float = 10.0,
    axis: int = 2,
    slice_info: Mapping[str, SliceInfo] | None = None,
    protocol: str = "block",
    terms: SplitTerms = PYTHON_TERMS,
) -> Split:
    """Draw a few-shot split (same arguments, same split).

    A slice-level split whose val or test slices hold a class that no training slice holds (an atlas label
    confined to one height or one hemisphere, split along the wrong axis) logs a warning naming those classes
    and the slice axis whose split would train on every class, and records them in ``meta``
    (``classes_missing_from_train``).

    Args:
        dataset: a :class:`~salt_seg.data.dataset.Dataset` (its labelled cases and split hints are used) or a
            sequence of case ids.
        shots: training volumes (``volume``) or slices (``slice``), >= 1.
        seed: the random seed.
        level: ``volume`` or ``slice``.
        val: validation cases (int) or fraction of cases / of the labelled slice range (float).
        test: test cases (int) or fraction, as ``val``.
        guard_mm: slice level: minimum distance in mm between slices of different parts. The default 10 mm is
            because neighbouring 1 mm slices are nearly identical: a test slice next to a training slice would
            measure memory, not generalisation.
        axis: slice level: the RAS axis slices are taken along.
        slice_info: slice level: per-case :class:`SliceInfo` along ``axis``; read from ``dataset`` (along every
            axis, for the class check) when ``None``.
        protocol: slice level: ``block`` (contiguous parts, extrapolation; the default) or ``sparse``
            (training slices spread evenly, val and test in the gaps between them; interpolation). See the
            module docstring.
        terms: how the user spells these settings (CLI flags, config keys), for errors and warnings.

    Raises:
        ValueError: bad arguments (named), or not enough cases/slices for the request.
        DataError: a case has no labelled slices or is too short for the guard distance.
    """
    t = terms
    if level not in LEVELS:
        raise ValueError(f"{t.name('level')} must be one of {list(LEVELS)}, got {level!r}")
    if int(shots) < 1:
        raise ValueError(f"{t.name('shots')} must be >= 1, got {shots}")
    if axis not in (0, 1, 2):
        raise ValueError(f"{t.name('axis')} must be 0, 1 or 2, got {axis}")
    if guard_mm < 0:
        raise ValueError(f"{t.name('guard_mm')} must be >= 0, got {guard_mm}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"{t.name('protocol')} must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if protocol != "block" and level != "slice":
        raise ValueError(
            f"{t.setting('protocol', protocol)} applies to slice-level splits ({t.setting('level', 'slice')}), "
            f"got {t.setting('level', level)}"
        )
    shots = int(shots)
    if isinstance(dataset, Sequence) and not hasattr(dataset, "cases"):
        ids, hints, name, class_names = sorted(str(i) for i in dataset), {}, "", {}
    else:
        ids = [c.case_id for c in dataset.labelled]
        hints = {c.case_id: c.split for c in dataset.labelled}
        name, class_names = dataset.name, dict(getattr(dataset, "classes", None) or {})
    if not ids:
        raise ValueError("make_split: no labelled cases")
    meta: dict[str, Any] = {"val": val, "test": test}
    if level == "volume":
        train, val_ids, test_ids = _volume_split(ids, hints, shots, seed, val, test, t)
        return Split(
            "volume",
            shots,
            seed,
            axis,
            None,
            [SplitEntry(i) for i in train],
            [SplitEntry(i) for i in val_ids],
            [SplitEntry(i) for i in test_ids],
            name,
            meta,
        )
    for frac, nm in ((val, "val"), (test, "test")):
        if not isinstance(frac, float) or not 0.0 <= frac < 1.0:
            raise ValueError(
                f"slice-level splits ({t.setting('level', 'slice')}) take {t.name(nm)} as a fraction in "
                f"[0, 1), got {frac!r}"
            )
    if val + test >= 1.0:
        raise ValueError(
            f"{t.name('val')} + {t.name('test')} must leave room for training, got {val} + {test}"
        )
    infos: dict[int, Mapping[str, SliceInfo]]
    if slice_info is None:
        if not hasattr(dataset, "cases"):
            raise ValueError("slice-level splits of bare case ids need slice_info")
        infos = dict(read_slice_infos(dataset))  # every axis: the class check compares them
    else:
        infos = {axis: slice_info}

    def draw(along: int) -> Split:
        rng = np.random.default_rng(seed)
        # Shots go round-robin over the cases in a seeded order.
        order_ids = [ids[k] for k in rng.permutation(len(ids))]
        quota = {i: shots // len(ids) + (1 if r < shots % len(ids) else 0) for r, i in enumerate(order_ids)}
        protocol_parts = _sparse_parts if protocol == "sparse" else _block_parts
        parts = protocol_parts(ids, infos[along], quota, val, test, guard_mm, rng, t)
        drawn = Split(
            "slice",
            shots,
            seed,
            along,
            float(guard_mm),
            parts["train"],
            parts["val"],
            parts["test"],
            name,
            dict(meta),
            protocol,
        )
        spacing = {i: infos[along][i].spacing_mm for i in ids}
        assert drawn.min_distance_mm(spacing) >= guard_mm - 1e-6, "guard distance violated"
        return drawn

    split = draw(axis)
    missing = classes_missing_from_train(split, infos[axis])
    if missing:
        split.meta["classes_missing_from_train"] = missing
        log.warning(_coverage_warning(missing, class_names, axis, infos, draw, t))
    return split


def _coverage_warning(
    missing: list[int],
    class_names: Mapping[int, str],
    axis: int,
    infos: Mapping[int, Mapping[str, SliceInfo]],
    draw: Any,
    t: SplitTerms,
) -> str:
    """The warning for val/test classes without a training slice, with the axes whose split trains on every class."""
    named = ", ".join(f"{c} ({class_names[c]})" if c in class_names else str(c) for c in missing)
    text = (
        f"class(es) {named} appear in val or test slices but in no training slice of this split along axis "
        f"{axis} ({AXIS_NAMES[axis]}): their scores measure nothing the model was shown"
    )
    every = set().union(*(c for info in infos[axis].values() for c in info.classes or ()))
    covering = []
    for other in sorted(set(infos) - {axis}):
        try:
            candidate = draw(other)
        except (ValueError, DataError):
            continue  # this axis cannot hold the split at all
        if (part_classes(candidate, "train", infos[other]) or set()) >= every:
            covering.append(other)
    if covering:
        axes = " or ".join(f"{a} ({AXIS_NAMES[a]}, {t.setting('axis', a)})" for a in covering)
        return f"{text}; split along axis {axes}, whose training slices hold every class"
    if len(infos) > 1:
        return (
            f"{text}; no slice axis gives training slices holding every class at these settings: raise "
            f"{t.name('shots')}, or split whole volumes ({t.setting('level', 'volume')})"
        )
    return text
