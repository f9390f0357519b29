"""Continual training: ``salt-seg train --continue RUN`` (``train.continue_from``) teaches a finished run a new
dataset with new classes, and the result answers both.

- The earlier run's trained tensors (its adapter file: encoder weights for ``full``, SALT's factors for ``salt``,
  decoder, branch, class tokens) are the start; the model, adapter and base must be the earlier run's.
- Its classes keep their ids and their class tokens, which stay bit-identical (restored after every step: no
  gradient reaches them, but AdamW's weight decay would). The new dataset's classes get the next ids, in label
  order (:func:`class_mapping`); its labels are renamed on the fly (:class:`RemappedSlices`), so prompts and
  validation use the new ids.
- The run's preprocessing record, and so the adapter file that predict, evaluate and the viewer read, holds the
  union of the class names; the adapter's metadata ``extra.continual`` lists the tasks with their class-id maps.
- ``train.continual: osft`` constrains the updates with :class:`~salt_seg.training.osft.OSFT`, its protected
  basis computed from the earlier run's weights (so a resumed run recomputes the same one).

Separate adapters per task (the upper bound) need no continuation: train each task from the base and serve them
with ``salt-seg library`` (:mod:`salt_seg.library`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salt_seg import runs
from salt_seg.adapters import load_adapter, read_adapter_metadata, trainable_parameters
from salt_seg.training.config import ExperimentConfig, load_config
from salt_seg.training.osft import OSFT, block_importance, parameter_importance
from salt_seg.training.types import TrainData

log = logging.getLogger(__name__)


def class_mapping(prior: dict[int, str], new_ids: list[int]) -> dict[int, int]:
    """New dataset label id -> id in the continued model: after the earlier classes, in label order."""
    offset = max(prior) if prior else 0
    return {cid: offset + i + 1 for i, cid in enumerate(sorted(new_ids))}


class RemappedSlices:
    """A slice dataset whose label maps are renamed by a lookup table (other keys unchanged)."""

    def __init__(self, dataset: Any, mapping: dict[int, int]) -> None:
        self.dataset = dataset
        size = max([0, *mapping]) + 1
        self.lut = torch.zeros(size, dtype=torch.int64)
        for old, new in mapping.items():
            self.lut[old] = new

    def __len__(self) -> int:
        return len(self.dataset)

    def set_random_state(self, seed: int) -> None:
        if hasattr(self.dataset, "set_random_state"):
            self.dataset.set_random_state(seed)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        label = torch.as_tensor(item["label"])
        item["label"] = self.lut[label.clamp(0, len(self.lut) - 1)] * (label < len(self.lut))
        return item


@dataclass
class Prior:
    """The finished run a continuation starts from."""

    run_dir: Path
    adapter: Path
    config: ExperimentConfig
    classes: dict[int, str]
    num_tokens: int
    tasks: list[dict[str, Any]] = field(default_factory=list)


def read_prior(run_dir: str | Path) -> Prior:
    """The earlier run's adapter, config, classes and task history.

    Raises:
        FileNotFoundError: not a finished run directory.
        ValueError: the run has no class tokens or its adapter is unreadable.
    """

    run_dir = Path(run_dir)
    if not runs.is_run_dir(run_dir):
        raise FileNotFoundError(
            f"{run_dir}: not a run directory (no {runs.RUN_MARKER}); --continue needs one"
        )
    adapter = run_dir / runs.ADAPTER
    if not adapter.is_file():
        raise FileNotFoundError(f"{adapter}: the run to continue has not finished (no final adapter)")
    meta = read_adapter_metadata(adapter)
    shape = meta["tensors"].get("class_tokens.weight")
    if not shape:
        raise ValueError(
            f"{adapter}: the run has no class tokens (train.prompt auto or mixed); continuing keeps them"
        )
    names = meta["class_names"] or {}
    if isinstance(names, list):  # a list of names for ids 1..N
        names = {i + 1: n for i, n in enumerate(names)}
    classes = {int(k): str(v) for k, v in names.items()}
    tasks = list(meta["extra"].get("continual", {}).get("tasks", []))
    cfg = load_config(run_dir / runs.RUN_MARKER)
    if not tasks:
        tasks = [{"run": str(run_dir), "dataset": cfg.data.path, "class_map": {str(c): c for c in classes}}]
    return Prior(run_dir, adapter, cfg, classes, int(shape[0]), tasks)


def check_compatible(cfg: ExperimentConfig, prior: Prior) -> None:
    """The continued run must build the earlier run's model: same model section and adapter; ``osft`` needs
    full fine-tuning (the weights it constrains)."""
    here, there = cfg.to_dict(), prior.config.to_dict()
    for section in ("model", "adapter"):
        if here[section] != there[section]:
            diff = sorted(k for k in here[section] if here[section].get(k) != there[section].get(k))
            raise ValueError(
                f"--continue {prior.run_dir}: {section}.{diff[0] if diff else '*'} differs from the run's own "
                f"({there[section].get(diff[0]) if diff else ''!r}); a continuation keeps the model and adapter"
            )
    if cfg.train.continual == "osft" and cfg.adapter.name != "full":
        raise ValueError(
            f"train.continual: osft constrains full fine-tuning; the run's adapter is {cfg.adapter.name!r} "
            "(use train.continual: sequential)"
        )


class Continuation:
    """One continued run: the remapped data, the earlier run's tensors and the per-step constraints."""

    def __init__(self, cfg: ExperimentConfig, data: TrainData) -> None:
        assert cfg.train.continue_from
        self.cfg = cfg
        self.prior = read_prior(cfg.train.continue_from)
        check_compatible(cfg, self.prior)
        self.mapping = class_mapping(self.prior.classes, list(data.class_ids))
        record = data.record if data.record is not None else cfg.preprocessing
        names = {**self.prior.classes, **{self.mapping[c]: record.classes[c] for c in data.class_ids}}
        union = dataclasses.replace(record, classes=names)
        self.num_classes = max(max(names), self.prior.num_tokens)
        self.data = TrainData(
            train=RemappedSlices(data.train, self.mapping),
            val=RemappedSlices(data.val, self.mapping),
            class_ids=[self.mapping[c] for c in data.class_ids],
            split=data.split,
            dataset_hash=data.dataset_hash,
            record=union,
        )
        # a randomly initialised base was saved with the earlier run: the continuation builds on that one
        own = self.prior.run_dir / "base.safetensors"
        self.base_checkpoint = str(own) if cfg.model.checkpoint is None and own.is_file() else None
        self.frozen_tokens: torch.Tensor | None = None
        self.osft: Any = None
        self.model: Any = None

    def metadata(self, run_dir: str | Path) -> dict[str, Any]:
        """``extra.continual`` of the adapter files: the tasks so far, each with the run that learned it and its
        label -> model id map."""
        task = {
            "run": str(run_dir),
            "dataset": self.cfg.data.path,
            "class_map": {str(k): v for k, v in self.mapping.items()},
        }
        return {
            "method": self.cfg.train.continual,
            "continued_from": str(self.prior.run_dir),
            "tasks": [*self.prior.tasks, task],
        }

    def attach(self, model: Any, base_hash: str, progress: bool = False) -> None:
        """Load the earlier run's tensors into the freshly built ``model`` (which has :attr:`num_classes` tokens),
        keep its class tokens, and (``osft``) fix the protected subspaces from its weights."""

        n_prior = self.prior.num_tokens
        model.set_num_classes(n_prior)
        load_adapter(self.prior.adapter, model, expected_base_hash=base_hash, progress=progress)
        old = model.class_tokens.weight.detach().clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 1)
            model.set_num_classes(self.num_classes)
        with torch.no_grad():
            model.class_tokens.weight[:n_prior].copy_(old)
        self.frozen_tokens = old
        self.model = model
        if self.cfg.train.continual == "osft":
            named = trainable_parameters(model, named=True)
            images = torch.stack([self.data.train[i]["image"] for i in range(min(8, len(self.data.train)))])
            blocks = block_importance(model, images)
            tc = self.cfg.train
            self.osft = OSFT(
                [(n, p) for n, p in named if not n.startswith("class_tokens.")],
                parameter_importance([n for n, _ in named], blocks),
                min_retain=tc.osft_min_retain,
                max_retain=tc.osft_max_retain,
            )
            s = self.osft.summary()
            log.info(
                "OSFT: %d weight matrices, %d of %d singular directions protected",
                s["weights"],
                s["protected_directions"],
                s["of_directions"],
            )

    def to(self, device: torch.device) -> None:
        if self.osft is not None:
            self.osft.to(device)

    def before_step(self) -> None:
        """After backward (and unscaling), before clipping and the optimizer step."""
        if self.osft is not None:
            self.osft.project_gradients()
            self.osft.snapshot()

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimizer step: the constraint on the update, and the earlier classes' tokens restored."""
        if self.osft is not None:
            self.osft.project_updates()
        if self.frozen_tokens is not None:
            w = self.model.class_tokens.weight
            w[: self.frozen_tokens.shape[0]].copy_(self.frozen_tokens.to(w.device))
