"""The model a training run trains, built from its experiment config: the base (checkpoint or seeded random
init) at the record's image size, learned class tokens when the prompts need them, the full-resolution branch as
``model.hires`` asks, and the adapter with whatever else it declares trainable (decoder, norms, tokens, branch).

``salt-seg params --config`` counts with :func:`build_training_model`, so its total is the
``trainable_parameters`` that ``train`` reports: :func:`salt_seg.training.loop.train` builds its model with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from salt_seg.adapters import inject_adapters
from salt_seg.data.formats import load_dataset
from salt_seg.model.builtin import resolve_checkpoint
from salt_seg.model.checkpoint import load_base_model, state_dict_hash
from salt_seg.training.config import ExperimentConfig

#: train.prompt modes that prompt with learned class tokens
TOKEN_PROMPTS = ("auto", "mixed")


@dataclass
class TrainingModel:
    """A built training model.

    Attributes:
        model: the :class:`~salt_seg.model.sam.SamModel`, adapters injected unless built with ``inject=False``.
        base_hash: canonical hash of the base weights (without class tokens); adapters record it.
        base_state: the base weights without class tokens (what a randomly initialised run saves).
        info: the checkpoint's description, ``None`` for a random init.
    """

    model: Any
    base_hash: str
    base_state: dict[str, torch.Tensor]
    info: Any = None


def needs_class_tokens(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg.train.prompt`` prompts with learned class tokens (one per class)."""
    return cfg.train.prompt in TOKEN_PROMPTS


def config_class_ids(cfg: ExperimentConfig) -> list[int]:
    """The label values a run of ``cfg`` trains on, as :func:`~salt_seg.training.data.build_train_data` finds
    them: ``preprocessing.classes`` when the config sets it, else the dataset's own label table.

    Raises:
        ValueError: neither is available (``data.path`` empty).
        FileNotFoundError: ``data.path`` does not exist.
    """
    record = cfg.preprocessing
    if not cfg.classes_from_dataset:
        return list(record.class_ids)
    if not cfg.data.path:
        raise ValueError(
            "data.path is empty: the classes (one class token each) come from the dataset; set data.path or "
            "preprocessing.classes"
        )

    dataset = load_dataset(cfg.data.path, cfg.data.format)
    return sorted(int(c) for c in dataset.classes) if dataset.classes else list(record.class_ids)


def build_training_model(
    cfg: ExperimentConfig,
    num_classes: int,
    *,
    checkpoint: str | None = None,
    inject: bool = True,
    progress: bool = False,
) -> TrainingModel:
    """Build the model ``train`` trains for ``cfg``, initialised from ``cfg.train.seed`` without touching the
    global RNG.

    Args:
        cfg: the resolved experiment config.
        num_classes: classes of the run (class tokens are created only when :func:`needs_class_tokens`).
        checkpoint: base weights instead of ``cfg.model.checkpoint`` (a resumed random-init run's own base).
        inject: inject the adapter (``False``: the bare base, e.g. for
            :func:`~salt_seg.adapters.params.count_parameters`).
        progress: progress bar while decomposing weights for the adapter.

    Raises:
        ValueError: a bad variant, checkpoint or adapter setting (named).
    """

    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    record = cfg.preprocessing
    tokens = num_classes if needs_class_tokens(cfg) else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        ckpt = resolve_checkpoint(checkpoint if checkpoint is not None else cfg.model.checkpoint)
        model, info = load_base_model(
            cfg.model.variant, ckpt, image_size=record.image_size, num_classes=tokens, hires=cfg.model.hires
        )
        if needs_class_tokens(cfg) and model.num_classes != tokens:  # a checkpoint's tokens for other classes
            model.set_num_classes(tokens)
        base_state = {k: v for k, v in model.state_dict().items() if not k.startswith("class_tokens.")}
        base_hash = info.content_hash if info is not None else state_dict_hash(base_state)
        if inject:
            inject_adapters(model, cfg.adapter, base_hash=base_hash, progress=progress)
    return TrainingModel(model, base_hash, base_state, info)
