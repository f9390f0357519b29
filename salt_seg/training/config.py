"""The experiment config: one flat-ish YAML with sections ``model``, ``adapter``, ``data``, ``preprocessing`` and
``train``; every key typed and validated, unknown keys rejected with the key named (nanoGPT's rule).

One typed tree: :class:`ExperimentConfig` holds an :class:`~salt_seg.adapters.AdapterConfig` and a
:class:`~salt_seg.preprocessing.Preprocessing`, built with every default filled in by :func:`parse_config` (the one
entry: ``--set`` overrides applied once to the raw mapping, then parsed and validated once). The resolved config,
:meth:`ExperimentConfig.to_dict`, is saved as ``config.yaml`` in every run directory and parses back to the same
config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_seg.adapters.config import AdapterConfig, promote_rank
from salt_seg.configio import apply_overrides, from_dict, load_yaml, to_dict
from salt_seg.data.laterality import LATERAL_FLIP_MODES
from salt_seg.data.split import PROTOCOLS, SplitTerms
from salt_seg.preprocessing import Preprocessing

LOSSES = ("dice_focal", "dice_ce")
AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "galore", "q-galore")
#: how ``train.continue_from`` continues a run (:mod:`salt_seg.training.continual`)
CONTINUAL = ("sequential", "osft")
PROMPT_MIX = ("box", "points", "auto", "mixed", "geometric")
#: the split's settings as a config spells them (``data.holdout: volumes`` is ``level='volume'``), so that split
#: errors and warnings raised under ``train`` name the keys the user writes
SPLIT_TERMS = SplitTerms(
    names={
        "shots": "data.shots",
        "seed": "data.split_seed",
        "level": "data.holdout",
        "val": "data.val",
        "test": "data.test",
        "guard_mm": "data.guard_mm",
        "axis": "preprocessing.axis",
        "protocol": "data.protocol",
    },
    form="{name}: {value}",
    values={"level": {"volume": "volumes", "slice": "slices"}},
)


#: the preprocessing settings a run derives when the config leaves them out: ``classes`` from the dataset's label
#: table, ``prompt_mode`` from ``train.prompt``
DERIVED = ("classes", "prompt_mode")


@dataclass
class ModelSection:
    """Base model.

    Attributes:
        variant: SAM variant name, or ``None`` to detect it from ``checkpoint``.
        checkpoint: base weights (path), ``builtin`` for the shipped small base, or ``null`` for random init.
        image_size: model input size; defaults to the preprocessing record's ``image_size``.
        hires: the full-resolution mask branch (logits at the input resolution, :mod:`salt_seg.model.hires`):
            ``null`` = as the checkpoint has it, ``true`` = add a fresh one when the checkpoint has none,
            ``false`` = SAM's own quarter-resolution logits.
    """

    variant: str | None = "tiny"
    checkpoint: str | None = None
    image_size: int | None = None
    hires: bool | None = None


@dataclass
class DataSection:
    """Dataset and few-shot split.

    Attributes:
        path: dataset folder (any format ``salt-seg data check`` understands).
        format: dataset format name or ``auto``.
        shots: training slices (``holdout: slices``) or volumes (``holdout: volumes``).
        val: validation part: a count (int) or a fraction of the cases / of the labelled slice range (float).
        test: test part, as ``val``.
        split: an existing split JSON to reuse instead of drawing one.
        split_seed: seed of the shot selection (``null`` = the training seed).
        guard_mm: minimum distance between slices of different parts of the split (slice-level splits).
        holdout: ``slices`` (slice-level split with guard distance) or ``volumes`` (whole volumes held out).
        protocol: slice-level split protocol: ``block`` (contiguous train/val/test blocks: extrapolation) or
            ``sparse`` (training slices spread evenly, val/test in the gaps: interpolation); see
            :mod:`salt_seg.data.split`.
        augment: training augmentation (flip, small rotation/scale, intensity).
        lateral_flip: what the left-right flip does to left/right class pairs found from the class names
            (``hippocampus_L`` / ``hippocampus_R``, ``Left-X`` / ``Right-X``): ``swap`` (default) exchanges them,
            as a mirrored left structure is the right one; ``off`` never flips; ``plain`` flips and keeps the
            labels (older runs; it teaches the model that left and right are one class).
        cache: keep preprocessed slices in memory (MONAI CacheDataset).
    """

    path: str = ""
    format: str = "auto"
    shots: int = 10
    val: int | float = 0.2
    test: int | float = 0.4
    split: str | None = None
    split_seed: int | None = None
    guard_mm: float = 10.0
    holdout: str = "slices"
    protocol: str = "block"
    augment: bool = True
    lateral_flip: str = "swap"
    cache: bool = True

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ValueError(f"data.shots must be >= 1, got {self.shots}")
        for name in ("val", "test"):
            v = getattr(self, name)
            if v <= 0 or (isinstance(v, float) and v >= 1):
                raise ValueError(f"data.{name} must be a count >= 1 or a fraction in (0, 1), got {v}")
        if self.lateral_flip not in LATERAL_FLIP_MODES:
            raise ValueError(
                f"data.lateral_flip must be one of {list(LATERAL_FLIP_MODES)}, got {self.lateral_flip!r}"
            )
        if self.holdout not in ("slices", "volumes"):
            raise ValueError(f"data.holdout must be 'slices' or 'volumes', got {self.holdout!r}")
        if self.guard_mm < 0:
            raise ValueError(f"data.guard_mm must be >= 0, got {self.guard_mm}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"data.protocol: {self.protocol!r} is not one of {list(PROTOCOLS)}")
        if self.protocol != "block" and self.holdout != "slices":
            raise ValueError(
                f"data.protocol {self.protocol!r} needs data.holdout: slices, got {self.holdout!r}"
            )


@dataclass
class TrainSection:
    """Optimisation.

    Attributes:
        steps: optimizer steps.
        batch_size: slices per step (per process under torchrun: the global batch is split across ranks).
        grad_accum: micro-batches accumulated per optimizer step.
        lr / weight_decay / warmup_steps: AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``.
        lr_decoder / lr_class_tokens / lr_hires: peak learning rate of the mask decoder, the learned class
            tokens and the full-resolution branch (``null`` = ``lr``). Parts that start from scratch or far from
            their task (class tokens, a fresh branch) need a larger step than the adapters that nudge a
            pretrained encoder; the same schedule scales every group.
        loss: ``dice_focal`` or ``dice_ce`` (MONAI, on logits) plus ``adapter.reg_weight`` x the adapter's
            regulariser.
        prompt: prompt simulation for training: ``box``, ``points``, ``auto`` (learned class tokens), ``mixed``
            (all three) or ``geometric`` (box or points).
        box_jitter: box corner jitter as a fraction of the box side.
        points: positive points per prompt (one negative is added in ``points`` mode).
        val_every: validate every N steps (and at the end).
        early_stop: stop after this many validations without improvement (0 = never).
        amp: ``none``, ``bf16`` or ``fp16`` (GPU only; ignored on CPU with a warning).
        grad_checkpoint: recompute encoder blocks in backward to save memory (large variants).
        time_limit: a wall-clock budget in seconds for the whole run, validation included (0 = none). The cosine
            decay then follows whichever is further along, the steps or the budget, and training ends at the first
            step past the budget (validated, checkpointed and exported like the last step). Such a run's length
            depends on the machine: it is not bit-reproducible, and its summary records the steps it made.
        seed: initialisation, augmentation and prompt seed.
        num_workers: worker processes that make the coming steps' batches ahead (:mod:`salt_seg.training.prefetch`);
            every batch is a function of (seed, step), so the run is the same as with 0 (made in the training
            process), only faster where making samples is slow.
        overlays: validation overlays drawn into ``plots/``.
        ema_decay: keep an exponential moving average of the trained tensors (Polyak averaging) with this decay
            (0 = off). The average is what validation scores, what each checkpoint's adapter holds and what the run
            exports; the optimizer keeps training the raw tensors (saved in ``state.pt`` for ``--resume``). The
            decay warms up as ``min(ema_decay, (1 + step) / (10 + step))``, so early steps are not tied to the
            initial weights.
        optimizer: ``adamw`` or ``galore`` (:class:`salt_seg.training.galore.GaLoreAdamW`: AdamW whose moments
            of each 2-D weight matrix live in a rank-``galore_rank`` subspace of its gradient, for full
            fine-tuning in less memory; smaller tensors get plain AdamW).
        galore_rank: projection rank (clipped to the matrix's smaller side).
        galore_update_interval: steps between refreshes of the projection (SVD of the gradient).
        galore_scale: factor on the projected-back update (GaLore's alpha).
        galore_min_dim: matrices whose smaller side is below this use plain AdamW.
        continue_from: a finished run to continue on this config's dataset and classes (``salt-seg train
            --continue RUN``): its trained tensors and class tokens are the start, its classes are kept (their
            tokens frozen) and this dataset's classes get new ids after them (:mod:`salt_seg.training.continual`).
        continual: how to continue: ``sequential`` (train on as before: full fine-tuning continues a ``full``
            run, SALT a SALT run) or ``osft`` (Sculpting Subspaces: every weight matrix's leading singular
            directions protected, updates projected orthogonal to them; needs an ``adapter.name: full`` run).
        osft_min_retain / osft_max_retain: fraction of each weight's singular directions protected in the least /
            most important layer (layer importance from input-output similarity, :mod:`salt_seg.training.osft`).
            The four ``galore_*`` keys apply to ``q-galore`` too
            (:class:`salt_seg.training.qgalore.QGaLoreAdamW`: GaLore with an INT4 projector, INT8 weights
            updated by stochastic rounding and a per-matrix refresh interval that lengthens once the subspace
            stops moving; ``galore_update_interval`` is the starting interval).
        qgalore_proj_bits: bits of the projector's codes (4: INT4).
        qgalore_group_size: entries per quantization group (projector and INT8 weights).
        qgalore_int8_weights: keep each projected matrix as INT8 codes updated by stochastic rounding.
        qgalore_cos_threshold: a refresh is "stable" when the leading singular vector's absolute cosine
            similarity to the previous refresh's is at least this.
        qgalore_patience: stable refreshes in a row after which a matrix's interval grows.
        qgalore_interval_growth: factor on the interval then (2: doubled).
    """

    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    lr_decoder: float | None = None
    lr_class_tokens: float | None = None
    lr_hires: float | None = None
    weight_decay: float = 1e-2
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    loss: str = "dice_focal"
    prompt: str = "box"
    box_jitter: float = 0.1
    points: int = 1
    val_every: int = 50
    early_stop: int = 0
    amp: str = "none"
    grad_checkpoint: bool = False
    time_limit: float = 0.0
    seed: int = 0
    num_workers: int = 0
    overlays: int = 4
    ema_decay: float = 0.0
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    galore_rank: int = 128
    galore_update_interval: int = 200
    galore_scale: float = 0.25
    galore_min_dim: int = 64
    continue_from: str | None = None
    continual: str = "sequential"
    osft_min_retain: float = 0.1
    osft_max_retain: float = 0.8
    qgalore_proj_bits: int = 4
    qgalore_group_size: int = 256
    qgalore_int8_weights: bool = True
    qgalore_cos_threshold: float = 0.4
    qgalore_patience: int = 5
    qgalore_interval_growth: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.val_every < 1:
            raise ValueError(
                "train.steps, train.batch_size, train.grad_accum and train.val_every must be >= 1"
            )
        if not self.time_limit >= 0:
            raise ValueError(f"train.time_limit must be >= 0 seconds (0 = none), got {self.time_limit}")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for name in ("lr_decoder", "lr_class_tokens", "lr_hires"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"train.{name} must be > 0 or null, got {value}")
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss: {self.loss!r} is not one of {list(LOSSES)}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"train.amp: {self.amp!r} is not one of {list(AMP_MODES)}")
        if self.prompt not in PROMPT_MIX:
            raise ValueError(f"train.prompt: {self.prompt!r} is not one of {list(PROMPT_MIX)}")
        if self.points < 1:
            raise ValueError(f"train.points must be >= 1, got {self.points}")
        if not 0 <= self.box_jitter < 1:
            raise ValueError(f"train.box_jitter must be in [0, 1), got {self.box_jitter}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer: {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        for name in ("galore_rank", "galore_update_interval", "galore_min_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.galore_scale > 0:
            raise ValueError(f"train.galore_scale must be > 0, got {self.galore_scale}")
        if self.continual not in CONTINUAL:
            raise ValueError(f"train.continual: {self.continual!r} is not one of {list(CONTINUAL)}")
        if not 0 <= self.osft_min_retain <= self.osft_max_retain <= 1:
            raise ValueError(
                "train.osft_min_retain and train.osft_max_retain must satisfy 0 <= min <= max <= 1, got "
                f"{self.osft_min_retain} and {self.osft_max_retain}"
            )
        if not 2 <= self.qgalore_proj_bits <= 8:
            raise ValueError(f"train.qgalore_proj_bits must be in 2..8, got {self.qgalore_proj_bits}")
        for name in ("qgalore_group_size", "qgalore_patience", "qgalore_interval_growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not -1 <= self.qgalore_cos_threshold <= 1:
            raise ValueError(
                f"train.qgalore_cos_threshold must be in [-1, 1], got {self.qgalore_cos_threshold}"
            )


@dataclass
class ExperimentConfig:
    """A whole experiment, every section typed and resolved.

    Attributes:
        derived: the preprocessing settings of :data:`DERIVED` the config leaves to the run (set by the parser
            from the keys the ``preprocessing`` section gives; not a config key). ``classes`` there means the
            dataset's label table replaces ``preprocessing.classes``; ``prompt_mode`` follows ``train.prompt``.
    """

    model: ModelSection = field(default_factory=ModelSection)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataSection = field(default_factory=DataSection)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    train: TrainSection = field(default_factory=TrainSection)
    description: str = ""
    derived: tuple[str, ...] = DERIVED

    def __post_init__(self) -> None:
        if "prompt_mode" in self.derived:
            mode = _prompt_mode(self.train.prompt)
            if self.preprocessing.prompt_mode != mode:
                self.preprocessing = dataclasses.replace(self.preprocessing, prompt_mode=mode)

    @classmethod
    def prepare_raw(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The parser's hook (:func:`salt_seg.configio.from_dict`): the preprocessing section takes
        ``image_size`` from ``model.image_size`` and ``prompt_mode`` from ``train.prompt`` unless it sets them;
        ``derived`` records which of :data:`DERIVED` it leaves out."""
        if "derived" in raw:
            raise ValueError(f"unknown config key 'derived'; valid keys here: {sorted(_SECTION_KEYS)}")
        pre = raw.get("preprocessing")
        if pre is None:
            pre = raw["preprocessing"] = {}
        if not isinstance(pre, dict):
            return raw  # the parser names the section and its type
        model = raw.get("model")
        if isinstance(model, dict) and model.get("image_size") is not None:
            pre.setdefault("image_size", model["image_size"])
        raw["derived"] = [k for k in DERIVED if k not in pre]
        return raw

    @property
    def classes_from_dataset(self) -> bool:
        """``preprocessing.classes`` is the dataset's label table (the config does not set it)."""
        return "classes" in self.derived

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as ``config.yaml`` holds it: every setting with its default (the adapter's own
        defaults included), except the preprocessing settings the run derives (:attr:`derived`). Parses back to
        the same config."""
        doc: dict[str, Any] = to_dict(self)
        del doc["derived"]
        doc["adapter"] = self.adapter.to_dict()
        record = self.preprocessing.to_dict()
        doc["preprocessing"] = {k: v for k, v in record.items() if k not in self.derived}
        return doc


_SECTION_KEYS = [f.name for f in dataclasses.fields(ExperimentConfig) if f.name != "derived"]


def _prompt_mode(train_prompt: str) -> str:
    """The preprocessing record's prompt mode for a training prompt mix (``geometric`` is box or points)."""
    return "mixed" if train_prompt == "geometric" else train_prompt


def override_config(doc: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` overrides applied to a raw experiment mapping (a copy is returned).

    A rank sub-key (``adapter.rank.attn=760``) on a config whose rank is one value or one rule keeps that value as
    the default of the other layer types (``salt-seg params --rank`` is translated into these items too).
    """
    if any(o.strip().startswith("adapter.rank.") for o in overrides):
        adapter = doc.get("adapter") or {}
        if isinstance(adapter, dict):
            doc = {**doc, "adapter": promote_rank(adapter)}
    return apply_overrides(doc, overrides)


def parse_config(doc: Mapping[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The one way to an :class:`ExperimentConfig`: overrides applied once to the raw mapping, then parsed and
    validated once (every default filled in, the adapter's from its registry entry).

    Raises:
        ValueError: a malformed override, an unknown key, a wrong type or a bad value (the message names the key).
    """
    return from_dict(ExperimentConfig, override_config(doc, overrides))


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment config (or start from defaults when ``path`` is None) and apply overrides."""
    return parse_config(load_yaml(path) if path is not None else {}, overrides)
