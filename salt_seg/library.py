"""An adapter library: several adapters trained on one base, kept side by side and swapped without reloading it.

A library is a folder (default ``~/.salt_seg/library``, ``$SALT_SEG_LIBRARY``, or ``--library DIR``) holding

* ``NAME.safetensors``: a copy of each adapter file, unchanged;
* ``index.json`` (written atomically): the library's ``base_hash``, ``base_name`` and ``base_checkpoint`` (a
  built-in name, an absolute path, or ``bases/HASH.safetensors``, a copy of a run's own random base), and per
  entry its name, base hash, base name, classes, adapter method, parameter count, the time it was added, the
  adapter file it was copied from (``source``) and that file's run directory (``run``; ``compress --dice`` scores
  the entry on that run's test split).

The first adapter fixes the base; an adapter trained on other base weights (another canonical state-dict hash) is
refused. :class:`LibraryModels` keeps one base model in memory and swaps the library's adapters in and out of it
(:class:`AdapterSwitcher`); :func:`compress_library` measures how far the adapters' weight updates share a basis
(a joint SVD per layer and group of similar entries, Sub-MoE's Experts Union Decomposition) and, given scorers,
the Dice each entry keeps at each shared rank.
"""

from __future__ import annotations

import copy as copying
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from salt_seg.adapters import (
    adapter_layers,
    get_record,
    load_adapter,
    merge_adapters,
    read_adapter_metadata,
    remove_adapters,
)
from salt_seg.adapters.io import NON_BASE_PREFIXES, model_base_hash
from salt_seg.configio import from_dict
from salt_seg.inference.loading import LoadedModel, _class_names, resolve_base_checkpoint, run_dir_of
from salt_seg.io import atomic_path, atomic_write_bytes, atomic_write_json
from salt_seg.model.builtin import builtin_with_hash, is_builtin, resolve_checkpoint
from salt_seg.model.checkpoint import load_base_model
from salt_seg.model.hires import HIRES_PREFIX
from salt_seg.model.sam import InputPrompt
from salt_seg.preprocessing import Preprocessing
from salt_seg.runs import find_adapter

INDEX = "index.json"
FORMAT = "salt_seg.library"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
BASES = "bases"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

log = logging.getLogger(__name__)


def default_library_dir() -> Path:
    """``$SALT_SEG_LIBRARY``, else ``~/.salt_seg/library``."""
    env = os.environ.get("SALT_SEG_LIBRARY")
    return Path(env).expanduser() if env else Path.home() / ".salt_seg" / "library"


def check_name(name: str) -> str:
    """A library entry name: letters, digits, ``.``, ``_``, ``-``; 1-64 characters, starting alphanumeric.

    Raises:
        ValueError: anything else (path separators, spaces, a leading dot...).
    """
    if not _NAME.match(name) or name.endswith(SUFFIX):
        raise ValueError(
            f"library name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(no path, no {SUFFIX} suffix)"
        )
    return name


@dataclass(frozen=True)
class Library:
    """A library folder (it need not exist until the first :meth:`add`)."""

    root: Path

    @classmethod
    def open(cls, root: str | Path | None = None) -> Library:
        return cls(Path(root).expanduser() if root is not None else default_library_dir())

    # -- index ------------------------------------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        """The parsed ``index.json`` (an empty index when the folder has none).

        Raises:
            ValueError: the index is not a salt_seg library index.
        """
        f = self.root / INDEX
        if not f.is_file():
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "base_hash": None, "entries": {}}
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f}: not a readable library index ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{f}: not a salt_seg adapter library index")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{f}: library format {data['format_version']} is newer than this salt_seg reads"
            )
        return data

    def _write_index(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.root / INDEX, data, sort_keys=True)

    def entries(self) -> dict[str, dict[str, Any]]:
        """Entry name -> its index record, sorted by name."""
        return dict(sorted(self.index()["entries"].items()))

    @property
    def base_hash(self) -> str | None:
        return self.index().get("base_hash")

    def adapter_path(self, name: str) -> Path:
        """The adapter file of an entry.

        Raises:
            KeyError-like ``ValueError``: no such entry (the message lists the library's names).
        """
        entries = self.entries()
        if check_name(name) not in entries:
            known = ", ".join(entries) or "none"
            raise ValueError(f"{name!r} is not in the adapter library {self.root} (entries: {known})")
        return self.root / f"{name}{SUFFIX}"

    def base_checkpoint(self) -> str | None:
        """The base weights all entries were trained on: a built-in name or a file path (``None``: empty)."""
        named = self.index().get("base_checkpoint")
        if not named:
            return None
        if named.startswith(BASES + "/"):
            return str(self.root / named)
        return str(named)

    # -- changes ----------------------------------------------------------------------------------------------

    def add(self, source: str | Path, name: str, *, force: bool = False) -> dict[str, Any]:
        """Copy a run's (or an adapter file's) adapter into the library as ``name``.

        Raises:
            ValueError: a bad name, not an adapter, no preprocessing record, or an adapter of another base than
                the library's (the message names the file and both hashes).
            FileExistsError: ``name`` is taken and ``force`` is not set.
            FileNotFoundError: no such run or adapter, or its base cannot be found.
        """

        check_name(name)
        adapter = find_adapter(source)
        meta = read_adapter_metadata(adapter)
        if not meta.get("preprocessing"):
            raise ValueError(
                f"{adapter}: the adapter holds no preprocessing record; it cannot be used for inference"
            )
        data = self.index()
        entries: dict[str, Any] = data["entries"]
        stored = str(meta.get("base_hash") or "")
        if not stored:
            raise ValueError(f"{adapter}: the adapter records no base hash; it cannot join a library")
        lib_hash = data.get("base_hash")
        if lib_hash and entries and stored != lib_hash:
            raise ValueError(
                f"{adapter}: trained on base {stored[:12]}…, but the library {self.root} holds adapters of base "
                f"{lib_hash[:12]}… (canonical state-dict hashes); use another --library for another base"
            )
        if name in entries and not force:
            raise FileExistsError(
                f"{name!r} is already in the library {self.root}; pass --force to replace it"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        if not entries:  # the first adapter fixes the base
            named = str((meta.get("extra") or {}).get("base_checkpoint") or "")
            base = resolve_base_checkpoint(adapter, meta, None)
            if is_builtin(named):  # by name: the shipped base whose hash the adapter records
                base_ref = base_name = builtin_with_hash(stored, first=named) or named
            elif base is None:
                raise FileNotFoundError(f"{adapter}: no base checkpoint found for it")
            elif named.startswith("run:"):  # the run's own base: keep a copy, the run may go away
                base_ref = f"{BASES}/{stored[:16]}{SUFFIX}"
                atomic_write_bytes(self.root / base_ref, Path(base).read_bytes())
                base_name = f"{Path(base).name} of {adapter.parent}"
            else:
                base_ref, base_name = str(Path(base).resolve()), Path(base).name
            data.update(
                base_hash=stored,
                base_checkpoint=base_ref,
                base_name=base_name,
                base_variant=meta["base_variant"],
            )
        config = meta.get("config") or {}
        record = {
            "name": name,
            "base_hash": stored,
            "base_name": data.get("base_name"),
            "classes": meta.get("class_names"),
            "method": config.get("name"),
            "parameters": int(meta["num_parameters"]),
            "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": str(Path(adapter).resolve()),
            "run": str(run.resolve()) if (run := run_dir_of(Path(adapter))) is not None else None,
        }
        atomic_write_bytes(self.root / f"{name}{SUFFIX}", Path(adapter).read_bytes())
        entries[name] = record
        self._write_index(data)
        return record

    def remove(self, name: str) -> None:
        """Drop an entry (the last one also frees the library's base).

        Raises:
            ValueError: no such entry.
        """
        path = self.adapter_path(name)
        data = self.index()
        del data["entries"][name]
        if not data["entries"]:
            for key in ("base_hash", "base_checkpoint", "base_name", "base_variant"):
                data.pop(key, None)
            shutil.rmtree(self.root / BASES, ignore_errors=True)
        self._write_index(data)
        path.unlink(missing_ok=True)


def resolve_model(
    model: str | Path, checkpoint: str | None = None, library: str | Path | None = None
) -> tuple[str, str | None]:
    """``predict --model``: an existing path is used as is; otherwise a library entry name -> its adapter file and
    (unless ``checkpoint`` is given) the library's base. Anything else is returned unchanged, for the loader to
    report."""
    text = str(model)
    if Path(text).exists() or not _NAME.match(text):
        return text, checkpoint
    lib = Library.open(library)
    if text not in lib.entries():
        if library is not None:
            lib.adapter_path(text)  # raises, naming the entries
        return text, checkpoint
    return str(lib.adapter_path(text)), checkpoint or lib.base_checkpoint()


class AdapterSwitcher:
    """One base model in memory, adapters swapped in and out of it without reading the base again.

    The switcher keeps a copy of the base weights (learned class tokens aside); :meth:`activate` takes the current
    adapter out (:func:`~salt_seg.adapters.remove_adapters`), restores every base tensor (parts an adapter trained,
    such as norms or the mask decoder, included), loads the next adapter and merges it. The result equals loading
    that adapter onto a freshly read base.

    Args:
        model: a base model without adapters (eval mode, on its device).
        base_hash: the base checkpoint's content hash (else computed from the model once).
    """

    def __init__(self, model: Any, base_hash: str | None = None) -> None:

        if get_record(model) is not None:
            raise ValueError("AdapterSwitcher needs a base model without adapters")
        self.model = model
        self.base_hash = base_hash or model_base_hash(model)
        self._base = {
            k: v.detach().clone()
            for k, v in model.state_dict().items()
            if not k.startswith(NON_BASE_PREFIXES)
        }
        self.active: Path | None = None

    @torch.no_grad()
    def activate(self, adapter: str | Path, *, merge: bool = True) -> dict[str, Any]:
        """Swap ``adapter`` in; returns its metadata (:func:`~salt_seg.adapters.read_adapter_metadata`).

        Raises:
            ValueError: the adapter does not fit the base (another base hash, variant or shapes).
        """

        model = self.model
        remove_adapters(model)
        self.active = None
        state = model.state_dict()
        for k, v in self._base.items():
            state[k].copy_(v)
        meta = load_adapter(adapter, model, expected_base_hash=self.base_hash, progress=False)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        if merge:
            merge_adapters(model)
        self.active = Path(adapter)
        return meta


class LibraryModels:
    """The library's adapters on one base model: :meth:`load` a name, then another, reading the base once.

    The base is read again only when an entry needs another input size or the full-resolution branch (a
    different architecture); :attr:`base_loads` counts the reads.
    """

    def __init__(self, library: Library, device: torch.device | str = "cpu") -> None:
        self.library = library
        self.device = device
        self.base_loads = 0
        self._key: tuple[Any, ...] | None = None
        self._switcher: AdapterSwitcher | None = None

    def _switcher_for(self, meta: dict[str, Any], image_size: int) -> AdapterSwitcher:
        """The switcher whose base fits ``meta`` (reads the base when none does yet)."""

        hires = True if any(k.startswith(HIRES_PREFIX) for k in meta["tensors"]) else None
        variant = meta.get("base_variant") or None
        key = (variant, image_size, hires)
        if self._switcher is None or key != self._key:
            shape = meta["tensors"].get("class_tokens.weight")
            base = resolve_checkpoint(self.library.base_checkpoint())  # a built-in name -> its file
            model, info = load_base_model(
                variant, base, image_size=image_size, num_classes=int(shape[0]) if shape else 0, hires=hires
            )
            model = model.to(self.device).eval()
            self._switcher = AdapterSwitcher(model, info.content_hash if info is not None else None)
            self._key = key
            self.base_loads += 1
        return self._switcher

    def load(self, name: str, *, merge: bool = True, copy: bool = False) -> Any:  # -> LoadedModel
        """Entry ``name`` ready for inference, as :func:`salt_seg.inference.load_inference_model` returns it.

        Args:
            name: the entry.
            merge: fold the adapter into the weights.
            copy: a model of its own, built from the base already in memory (no read, no SVD beyond the cache),
                that later loads leave alone (the viewer's sessions share models read-only); by default the one
                model in memory is switched to ``name``.
        """

        path = self.library.adapter_path(name)
        meta = read_adapter_metadata(path)
        record = from_dict(Preprocessing, meta["preprocessing"])
        switcher = self._switcher_for(meta, record.image_size)
        if copy:
            private = AdapterSwitcher.__new__(AdapterSwitcher)
            private.model = copying.deepcopy(switcher.model)  # the shared model keeps its adapter
            remove_adapters(private.model)
            private.base_hash, private._base, private.active = switcher.base_hash, switcher._base, None
            switcher = private
        switcher.activate(path, merge=merge)
        full = {
            **meta,
            "adapter_path": str(path),
            "base_checkpoint": self.library.base_checkpoint(),
            "merged": merge,
            "library_name": name,
        }
        return LoadedModel(switcher.model, record, _class_names(meta, record), full)


#: scores one entry's model as it is in memory (a :class:`~salt_seg.inference.LoadedModel`) on that task's
#: evaluation data and returns its Dice; ``salt-seg library compress --eval/--dice`` builds one per entry from
#: :func:`salt_seg.evaluation.model_eval.evaluate_run` (the library sits beside evaluation and does not import it)
Scorer = Callable[[Any], float]


@dataclass
class CompressionReport:
    """What :func:`compress_library` measured.

    Attributes:
        names: the entries, in order.
        layers: the adapted layers (union over the entries).
        dense_bytes: the entries' per-layer weight updates ``ΔW_k`` stored densely in fp32, all entries together.
        adapter_bytes: the entries' adapter tensors as trained (fp32), all entries together.
        private_bytes: the entries' tensors that are not updates of a wrapped layer (class tokens, norms, decoder
            parts), kept per entry in every compressed size.
        rows: one per shared rank: ``rank`` (``"full"`` or an int), ``bytes`` (shared bases + per-entry
            coefficients + private tensors, fp32), ``cluster_bytes`` (the bases and coefficients of each group,
            private tensors aside), ``weight_error`` and ``output_error`` (name -> relative Frobenius error of the
            reconstructed ``ΔW`` over all layers, and relative L2 difference of the mask logits on a fixed
            synthetic input against the uncompressed adapter), ``dice`` and ``retained`` (scored entries only:
            name -> Dice of the entry at this rank, and that Dice over the uncompressed adapter's).
        groups: the entries sharing one basis per layer (one group unless ``clusters`` > 1), in order.
        distances: the entries' pairwise output distances the groups were formed from (``None`` with one group).
        dice: scored entries: name -> Dice of the adapter as trained.
        unscored: the entries without evaluation data (no Dice).
    """

    names: list[str]
    layers: list[str]
    dense_bytes: int
    adapter_bytes: int
    private_bytes: int
    rows: list[dict[str, Any]]
    groups: list[list[str]] = field(default_factory=list)
    distances: list[list[float]] | None = None
    dice: dict[str, float] = field(default_factory=dict)
    unscored: list[str] = field(default_factory=list)


def _synthetic_batch(model: Any) -> tuple[torch.Tensor, list[Any]]:

    s = int(model.image_size)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, s, s, generator=g)
    box = torch.tensor([0.1 * s, 0.15 * s, 0.6 * s, 0.7 * s])
    second = InputPrompt(class_id=1) if getattr(model, "num_classes", 0) else InputPrompt(box=box * 0.8)
    return images, [InputPrompt(box=box), second]


@torch.no_grad()
def _logits(model: Any, batch: tuple[torch.Tensor, list[Any]]) -> torch.Tensor:
    device = next(model.parameters()).device
    images, prompts = batch
    logits, _ = model(images.to(device), prompts)
    return logits.float().cpu()


def output_distances(
    deltas: Mapping[str, Mapping[str, torch.Tensor]], names: list[str], probes: int = 8
) -> torch.Tensor:
    """Pairwise output distances of the entries' weight updates (``K x K``, 0 on the diagonal).

    Every adapted layer gets one fixed random input batch ``X`` (``fan_in x probes``, seeded, the same for all
    entries); an entry's output change there is ``ΔW_k X``. The distance of two entries is ``1 - |cos|`` of their
    output changes, averaged over the layers (1 where one of them leaves the layer alone). ``|cos|``: a shared basis
    serves ``ΔW`` and ``-ΔW`` alike. For Gaussian ``X`` the cosine estimates the Frobenius cosine of the updates.
    """
    k = len(names)
    total = torch.zeros(k, k, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for lname in sorted(deltas):
        by_name = deltas[lname]
        out_, fan = next(iter(by_name.values())).shape
        x = torch.randn(fan, probes, generator=g, dtype=torch.float64)
        ys = torch.stack(
            [
                (by_name[n].double() @ x).flatten() if n in by_name else torch.zeros(out_ * probes).double()
                for n in names
            ]
        )
        norms = ys.norm(dim=1)
        unit = ys / norms.clamp_min(1e-300)[:, None]
        cos = (unit @ unit.T).abs().clamp(max=1.0)
        cos[norms == 0, :] = 0.0
        cos[:, norms == 0] = 0.0
        total += 1.0 - cos
    dist = total / max(len(deltas), 1)
    dist.fill_diagonal_(0.0)
    return dist


def cluster_entries(distances: torch.Tensor, names: list[str], clusters: int) -> list[list[str]]:
    """Group the entries into at most ``clusters`` groups by average-linkage hierarchical clustering of their
    output distances (:func:`scipy.cluster.hierarchy.linkage`, cut with ``fcluster(..., "maxclust")``); groups
    in the order of their first entry. Identical entries may leave fewer groups than asked for."""
    if clusters <= 1 or len(names) <= 1:
        return [list(names)]
    from scipy.cluster.hierarchy import fcluster, linkage  # deferred: only --clusters needs scipy
    from scipy.spatial.distance import squareform  # deferred: as above

    d = distances.double().numpy()
    d = (d + d.T) / 2
    z = linkage(squareform(d, checks=False), method="average")
    labels = fcluster(z, t=clusters, criterion="maxclust")
    groups: dict[int, list[str]] = {}
    for name, label in zip(names, labels, strict=True):
        groups.setdefault(int(label), []).append(name)
    return sorted(groups.values(), key=lambda g: names.index(g[0]))


@torch.no_grad()
def compress_library(
    library: Library,
    ranks: list[int | None] | None = None,
    *,
    out: str | Path | None = None,
    device: torch.device | str = "cpu",
    clusters: int = 1,
    scorers: Mapping[str, Scorer] | None = None,
) -> CompressionReport:
    """Joint SVD of the library's weight updates, one shared basis per layer and group (Experts Union
    Decomposition), with the Dice each entry keeps at each shared rank.

    For every adapted layer, the updates ``ΔW_k`` (merged weight minus base weight, ``out x fan_in``) of a group's
    entries are concatenated along the columns, ``[ΔW_1 … ΔW_K] = U S Vᵀ``; at shared rank ``R`` the layer keeps
    ``U_R`` (``out x R``) once per group and each entry its coefficients ``V_k = U_Rᵀ ΔW_k`` (``R x fan_in``), so
    ``ΔW_k ≈ U_R U_Rᵀ ΔW_k``. At full rank (``min(out, K·fan_in)``) this is exact up to float rounding. Entries'
    other tensors (class tokens, norms, decoder parts) are kept as they are. With ``clusters`` > 1 the entries are
    first grouped by the similarity of their output changes (:func:`output_distances`, :func:`cluster_entries`),
    Sub-MoE's clustering of similar experts, and each group gets its own bases.

    Args:
        library: a library with at least one entry.
        ranks: shared ranks to measure (``None`` = full; larger ones are clipped to full per layer; 0 = every
            update dropped, the entries' private tensors alone: the floor to read the others against); default
            full, 64, 32, 16, 8, 4.
        out: write the compressed library at the last rank of ``ranks`` to this safetensors file (analysis
            output: ``predict`` does not load it).
        device: where the models run (the SVDs run on the CPU in float64).
        clusters: the most groups to form (1: one basis per layer for all entries).
        scorers: entry name -> :data:`Scorer`; each named entry is scored as trained and at every rank, with the
            compressed updates written into its layers' weights (others get no Dice).

    Raises:
        ValueError: an empty library, a negative rank, a cluster count below 1 or above the entries', or a scorer
            for an entry the library does not hold.
    """

    names = list(library.entries())
    if not names:
        raise ValueError(f"{library.root}: the library is empty; nothing to compress")
    wanted: list[int | None] = list(ranks) if ranks else [None, 64, 32, 16, 8, 4]
    if any(r is not None and r < 0 for r in wanted):
        raise ValueError(f"--rank must be >= 0, got {wanted}")
    if clusters < 1 or clusters > len(names):
        raise ValueError(
            f"--clusters must be between 1 and the library's {len(names)} entries, got {clusters}"
        )
    scorers = dict(scorers or {})
    for name in scorers:
        library.adapter_path(name)  # raises, naming the entries
    models = LibraryModels(library, device)
    deltas: dict[str, dict[str, torch.Tensor]] = {}  # layer -> name -> ΔW (fp32, out x fan_in, CPU)
    shapes: dict[str, tuple[int, int]] = {}
    private: dict[str, dict[str, torch.Tensor]] = {}
    adapter_bytes = 0
    for name in names:
        loaded = models.load(name)
        switcher = models._switcher
        assert switcher is not None
        layers = adapter_layers(loaded.model)
        for lname, layer in layers.items():
            merged = layer.base_layer.weight.detach().float().cpu()
            base = switcher._base[f"{lname}.weight"].float().cpu()
            d = (merged - base).reshape(merged.shape[0], -1)
            deltas.setdefault(lname, {})[name] = d
            shapes[lname] = (d.shape[0], d.shape[1])
        own = load_file(str(library.adapter_path(name)))
        adapter_bytes += sum(t.numel() * 4 for t in own.values())
        private[name] = {k: v for k, v in own.items() if not any(k.startswith(n + ".") for n in layers)}
    layer_names = sorted(deltas)
    k = len(names)
    dense_bytes = sum(out_ * fan * 4 * len(deltas[n]) for n, (out_, fan) in shapes.items())
    private_bytes = sum(t.numel() * 4 for p in private.values() for t in p.values())
    distances = output_distances(deltas, names) if clusters > 1 and k > 1 else None
    groups = cluster_entries(distances, names, clusters) if distances is not None else [list(names)]
    group_of = {n: g for g, members in enumerate(groups) for n in members}
    # (group, layer) -> the group's entries that update the layer, and their shared basis
    members: dict[tuple[int, str], list[str]] = {}
    bases: dict[tuple[int, str], torch.Tensor] = {}
    for g, group in enumerate(groups):
        for lname in layer_names:
            here = [n for n in group if n in deltas[lname]]
            if not here:
                continue
            stacked = torch.cat([deltas[lname][n].double() for n in here], dim=1)  # out x K_g·fan
            u, _, _ = torch.linalg.svd(stacked, full_matrices=False)
            members[g, lname], bases[g, lname] = here, u  # out x min(out, K_g·fan)

    def rank_of(key: tuple[int, str], r: int | None) -> int:
        full = bases[key].shape[1]
        return full if r is None else min(r, full)

    rows: list[dict[str, Any]] = []
    for r in wanted:
        per_group = [0] * len(groups)
        for (g, lname), here in members.items():
            out_, fan = shapes[lname]
            per_group[g] += (out_ + len(here) * fan) * rank_of((g, lname), r) * 4
        rows.append(
            {
                "rank": "full" if r is None else r,
                "bytes": private_bytes + sum(per_group),
                "cluster_bytes": per_group,
                "weight_error": {},
                "output_error": {},
                "dice": {},
                "retained": {},
            }
        )
    dice: dict[str, float] = {}
    for name in names:
        loaded = models.load(name)
        batch = _synthetic_batch(loaded.model)
        reference = _logits(loaded.model, batch)
        score = scorers.get(name)
        if score is not None:
            dice[name] = float(score(loaded))
            log.info("%s as trained: Dice %.4f", name, dice[name])
        switcher = models._switcher
        assert switcher is not None
        layers = adapter_layers(loaded.model)
        g = group_of[name]
        for r, row in zip(wanted, rows, strict=True):
            err = norm = 0.0
            for lname in layer_names:
                d = deltas[lname].get(name)
                if d is None:
                    continue
                u = bases[g, lname][:, : rank_of((g, lname), r)]
                recon = u @ (u.T @ d.double())
                err += float((d.double() - recon).pow(2).sum())
                norm += float(d.double().pow(2).sum())
                weight = layers[lname].base_layer.weight
                base = switcher._base[f"{lname}.weight"].double().cpu()
                weight.copy_((base + recon.reshape(base.shape)).to(weight.dtype))
            row["weight_error"][name] = (err / norm) ** 0.5 if norm > 0 else 0.0
            got = _logits(loaded.model, batch)
            row["output_error"][name] = float((got - reference).norm() / reference.norm().clamp_min(1e-12))
            if score is not None:
                row["dice"][name] = float(score(loaded))
                row["retained"][name] = row["dice"][name] / dice[name] if dice[name] > 0 else float("nan")
                log.info("%s at rank %s: Dice %.4f", name, row["rank"], row["dice"][name])
    if out is not None:
        r = wanted[-1]
        tensors: dict[str, torch.Tensor] = {}
        for (g, lname), here in members.items():
            u = bases[g, lname][:, : rank_of((g, lname), r)]
            tensors[f"U/{lname}" if len(groups) == 1 else f"U/{g}/{lname}"] = u.float().contiguous()
            for name in here:
                tensors[f"V/{name}/{lname}"] = (u.T @ deltas[lname][name].double()).float().contiguous()
        for name, p in private.items():
            for key, t in p.items():
                tensors[f"private/{name}/{key}"] = t.contiguous()
        metadata = {
            "format": "salt_seg.library.compressed",
            "format_version": "1",
            "base_hash": str(library.base_hash),
            "rank": "full" if r is None else str(r),
            "entries": json.dumps(names),
            "groups": json.dumps(groups),
        }
        atomic_write_bytes(out, save_tensors(tensors, metadata=metadata))
    return CompressionReport(
        names,
        layer_names,
        dense_bytes,
        adapter_bytes,
        private_bytes,
        rows,
        groups=groups,
        distances=distances.tolist() if distances is not None else None,
        dice=dice,
        unscored=[n for n in names if n not in dice],
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_compression(report: CompressionReport) -> str:
    """The report as text: the groups, one row per shared rank with the size and per-entry weight and output
    errors, and (for scored entries) a second table of Dice and Dice retained per rank."""

    width = max([12, *(len(n) for n in report.names)])
    lines = [
        f"{len(report.names)} adapters, {len(report.layers)} adapted layers; dense updates "
        f"{_mb(report.dense_bytes)}, adapter files {_mb(report.adapter_bytes)} (fp32), of which per-adapter "
        f"private tensors {_mb(report.private_bytes)}",
    ]
    if len(report.groups) > 1:
        lines.append(f"{len(report.groups)} groups by output similarity, one shared basis per layer each:")
        for g, group in enumerate(report.groups):
            size = report.rows[0]["cluster_bytes"][g]
            lines.append(
                f"  group {g + 1}: {', '.join(group)} ({_mb(size)} at rank {report.rows[0]['rank']})"
            )
    else:
        lines.append("one group: a shared basis per layer for all entries")
    lines.append(
        "errors: relative Frobenius error of the reconstructed updates / relative difference of the mask logits on "
        "a synthetic input"
    )
    header = f"{'rank':>6} {'size':>12} {'vs dense':>9} {'vs files':>9}  " + "  ".join(
        f"{n:>{width}}" for n in report.names
    )
    lines.append(header)
    for row in report.rows:
        ratio = row["bytes"] / report.dense_bytes if report.dense_bytes else float("nan")
        files = row["bytes"] / report.adapter_bytes if report.adapter_bytes else float("nan")
        errors = [f"{row['weight_error'][n]:.1e}/{row['output_error'][n]:.1e}" for n in report.names]
        cells = "  ".join(f"{e:>{width}}" for e in errors)
        lines.append(
            f"{row['rank']!s:>6} {_mb(row['bytes']):>12} {ratio:>9.3f} {files:>9.3f}  {cells}".rstrip()
        )
    scored = [n for n in report.names if n in report.dice]
    if scored:
        lines.append(
            "Dice on each entry's test split, and retained = Dice at the rank / Dice of the adapter as trained:"
        )
        lines.append(f"{'rank':>8} {'size':>12}  " + "  ".join(f"{n:>{width}}" for n in scored))
        lines.append(
            f"{'adapter':>8} {_mb(report.adapter_bytes):>12}  "
            + "  ".join(f"{report.dice[n]:>{width}.4f}" for n in scored)
        )
        for row in report.rows:
            dices = [f"{row['dice'][n]:.4f} ({row['retained'][n]:.3f})" for n in scored]
            cells = "  ".join(f"{d:>{width}}" for d in dices)
            lines.append(f"{row['rank']!s:>8} {_mb(row['bytes']):>12}  {cells}")
    if report.unscored:
        lines.append(
            f"no Dice: no evaluation data for {', '.join(report.unscored)} "
            "(compress --eval NAME=RUN_DIR, or --dice for entries added from a run with a split)"
        )
    return "\n".join(lines)


def plot_compression(report: CompressionReport, path: str | Path) -> Path:
    """A PNG of Dice retained against the size of the compressed updates (shared bases + coefficients, log
    scale; the entries' private tensors come on top of every point), one line per scored entry, each point
    labelled with its shared rank; a rank-0 row (updates dropped) is drawn as a dotted level per entry
    (matplotlib, Agg; written atomically).

    Raises:
        ValueError: no entry was scored.
    """
    scored = [n for n in report.names if n in report.dice]
    if not scored:
        raise ValueError(f"{path}: nothing to plot, no entry has Dice (pass --eval NAME=RUN_DIR or --dice)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = [row for row in report.rows if row["rank"] != 0]
    floor = next((row for row in report.rows if row["rank"] == 0), None)
    sizes = [(row["bytes"] - report.private_bytes) / 2**20 for row in rows]
    for n in scored:
        (line,) = ax.plot(sizes, [row["retained"][n] for row in rows], "o-", lw=1.2, ms=4, label=n)
        if floor is not None:
            ax.axhline(floor["retained"][n], color=line.get_color(), lw=0.8, ls=":")
    for x, row in zip(sizes, rows, strict=True):
        ax.annotate(  # along the top edge, clear of the lines
            str(row["rank"]),
            (x, 1.0),
            xycoords=ax.get_xaxis_transform(),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    ax.axhline(1.0, color="grey", lw=0.5)
    values = [row["retained"][n] for row in report.rows for n in scored]
    ax.set_ylim(
        min(0.9, min(values) - 0.02), max(1.05, max(values) + 0.02)
    )  # noise stays small on this scale
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel(
        f"compressed updates, MiB fp32 (labels: shared rank; + {report.private_bytes / 2**20:.2f} MiB private "
        "tensors)"
    )
    ax.set_ylabel("Dice retained (Dice at rank / as trained)")
    groups = f", {len(report.groups)} groups" if len(report.groups) > 1 else ""
    dotted = "; dotted: updates dropped (rank 0)" if floor is not None else ""
    ax.set_title(f"Adapter library: joint SVD per layer{groups}{dotted}", fontsize=9, pad=14)
    ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
