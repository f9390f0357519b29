"""Typed adapter configuration: what is wrapped, at which rank, and which other parts of SAM train.

A rank is given per *layer type* (``attn``, ``mlp``, ``neck``, or ``default`` for all) in one of three explicit
forms, resolved per layer once its weight is known:

- an integer ``r`` (``0 <= r <= k``, ``k = min(out, in)``);
- ``{"fraction": f}``: ``round(f * k)``, clamped to ``[1, k]``;
- ``{"energy": e}``: the smallest ``r`` whose top singular values hold a share ``e`` of ``sum(sigma**2)``.

The SALT defaults are the released ranks written as fractions, so on ``vit_b`` (k = 768 for every encoder linear,
256 for the neck convs) they resolve to exactly attention 760, MLP 50, neck 250, and on smaller variants they scale
with the width.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from salt_seg.adapters.methods import AdapterMethod, get_adapter_method
from salt_seg.configio import OWN_CHECK

#: an explicit rank: ``int`` or ``{"fraction": float}`` or ``{"energy": float}``
RankSpec = int | dict[str, float]

CONFIG_VERSION = 1

#: patterns (``fnmatch``) over module names of a :class:`~salt_seg.model.sam.SamModel`
DEFAULT_TARGETS: tuple[str, ...] = (
    "image_encoder.blocks.*.attn.qkv",
    "image_encoder.blocks.*.attn.proj",
    "image_encoder.blocks.*.mlp.lin1",
    "image_encoder.blocks.*.mlp.lin2",
)
#: SAM's neck: a 1x1 and a 3x3 convolution (both bias-free), adapted when ``adapt_neck`` is set
NECK_TARGETS: tuple[str, ...] = ("image_encoder.neck.0", "image_encoder.neck.2")

LAYER_TYPES = ("attn", "mlp", "neck", "other")
INIT_MODES = ("identity", "reference")
RELU_MODES = ("diagonal", "reference")
COMPUTE_MODES = ("auto", "factored", "dense", "svd_basis")

#: the trainable "other parts" and the module they live in
EXTRA_FLAGS = (
    "train_norms",
    "train_pos_embed",
    "train_rel_pos",
    "train_mask_decoder",
    "train_prompt_encoder",
    "train_class_tokens",
    "train_hires",
)


def layer_type(module_name: str) -> str:
    """Classify a module name into a rank group: ``attn``, ``mlp``, ``neck`` or ``other``."""
    parts = module_name.split(".")
    if "attn" in parts:
        return "attn"
    if "mlp" in parts:
        return "mlp"
    if "neck" in parts:
        return "neck"
    return "other"


def parse_rank_spec(value: Any, where: str) -> RankSpec:
    """Validate one rank spec (int, ``{"fraction": f}`` or ``{"energy": e}``); strings like ``"0.5f"`` are not accepted.

    Args:
        value: the spec as written by the user (YAML/JSON/CLI).
        where: the config field it came from, for the error message.

    Raises:
        ValueError: anything else, naming ``where`` and the value.
    """
    if isinstance(value, bool):
        raise ValueError(
            f"AdapterConfig.{where}: a rank must be an int or a fraction/energy dict, got {value!r}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"AdapterConfig.{where}: rank must be >= 0, got {value}")
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return parse_rank_spec(int(value), where)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, amount),) = value.items()
        if kind in ("fraction", "energy"):
            try:
                amount = float(amount)
            except (TypeError, ValueError):
                raise ValueError(f"AdapterConfig.{where}: {kind} must be a number, got {amount!r}") from None
            if not 0.0 < amount <= 1.0:
                raise ValueError(f"AdapterConfig.{where}: {kind} must be in (0, 1], got {amount}")
            return {kind: amount}
    raise ValueError(
        f"AdapterConfig.{where}: a rank is an int, {{'fraction': f}} or {{'energy': e}}, got {value!r}"
    )


@dataclass
class AdapterConfig:
    """Everything that defines an adapter; saved as JSON in every adapter file.

    Fields left ``None`` take the adapter's own default (see :mod:`salt_seg.adapters.registry`) in
    ``__post_init__``, so a config always holds resolved values once built.

    Attributes:
        name: adapter registry name (``salt``, ``ssam``, ``svfit``, ``lora``, ``effort``, ``full``, ``none``).
        targets: ``fnmatch`` patterns over module names; each must match at least one ``nn.Linear``/``nn.Conv2d``.
        adapt_neck: also adapt SAM's two neck convolutions (:data:`NECK_TARGETS`).
        rank: per layer type (``attn``/``mlp``/``neck``/``other``/``default``) rank spec; merged over the
            adapter's defaults. Meaning: SALT/SVFit adapt the top-r singular values, Effort freezes them.
        r_lora: rank of the low-rank term (SALT's residual X·Y, LoRA's B·A); may exceed SALT's k − r.
        lora_alpha: LoRA scaling numerator (scale = lora_alpha / r_lora); ``None`` means scale 1 (SAMed).
        lora_qv_only: on fused ``qkv`` layers adapt only the q and v thirds (SAMed's setting).
        init: ``identity`` (the adapted model equals the base at step 0) or ``reference`` (SALT's released code:
            X and Y both random, N(0, 0.01²)).
        relu: ``diagonal`` (ReLU on the modified top-r singular values only) or ``reference`` (element-wise ReLU
            over the whole modified k × k Σ', as released: negative entries of diag(σ_res) + X·Y are zeroed too).
        compute: ``auto`` (the cost model's cheapest per layer and forward), ``factored``, ``dense`` (delta) or
            ``svd_basis`` (salt/ssam: the layer applied in its singular basis). All give the same function. (The
            released code's dense rebuild on every forward is not a configuration: the benchmark that times it
            sets ``SaltLayer.compute = "reference"`` on the layers it built.)
        reg_weight: λ of the regulariser; the training loop adds
            ``config.reg_weight * adapter_regularization(model)`` to the loss.
        train_norms / train_pos_embed / train_rel_pos / train_mask_decoder / train_prompt_encoder /
            train_class_tokens: which other parts of SAM train (LayerNorms of the image encoder, its absolute
            position embedding, its relative-position tables, the mask decoder, the prompt encoder, the learned
            per-class prompt tokens).
        train_hires: train the full-resolution mask branch (:mod:`salt_seg.model.hires`) where the model has
            one (default: yes, for every adapter).
    """

    name: str = "salt"
    # a single pattern is accepted as a one-item list
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata=OWN_CHECK)
    adapt_neck: bool = False
    # validated once, by ``__post_init__``, in any of its three forms; resolved to a per-layer-type mapping
    rank: dict[str, RankSpec] | RankSpec | None = field(default=None, metadata=OWN_CHECK)
    r_lora: int | None = None
    lora_alpha: float | None = None
    lora_qv_only: bool = False
    init: str = "identity"
    relu: str = "diagonal"
    compute: str = "auto"
    reg_weight: float | None = None
    train_norms: bool | None = None
    train_pos_embed: bool | None = None
    train_rel_pos: bool | None = None
    train_mask_decoder: bool | None = None
    train_prompt_encoder: bool | None = None
    train_class_tokens: bool | None = None
    train_hires: bool | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        spec = get_adapter_method(self.name)  # raises ValueError listing the valid names
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not isinstance(self.targets, (list, tuple)) or not all(
            isinstance(t, str) and t for t in self.targets
        ):
            raise ValueError(
                f"AdapterConfig.targets must be a list of module-name patterns, got {self.targets!r}"
            )
        self.targets = list(self.targets)
        if spec.wraps_layers and not self.targets and not self.adapt_neck:
            raise ValueError(
                f"AdapterConfig.targets: adapter {self.name!r} needs at least one target pattern"
            )
        for name, allowed in (("init", INIT_MODES), ("relu", RELU_MODES), ("compute", COMPUTE_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"AdapterConfig.{name}: {getattr(self, name)!r} is not one of {list(allowed)}"
                )
        if self.compute == "svd_basis" and not spec.holds_full_basis:
            raise ValueError(
                f"AdapterConfig.compute: 'svd_basis' needs the whole singular basis and exists only for salt "
                f"and ssam, not {self.name!r}"
            )
        self._resolve_rank(spec)
        if not spec.uses_r_lora and self.r_lora is not None:
            raise ValueError(
                f"AdapterConfig.r_lora: adapter {self.name!r} has no low-rank term; got {self.r_lora!r}"
            )
        if spec.uses_r_lora:
            if self.r_lora is None:
                self.r_lora = spec.default_r_lora
            if isinstance(self.r_lora, bool) or not isinstance(self.r_lora, int) or self.r_lora <= 0:
                raise ValueError(f"AdapterConfig.r_lora must be an integer >= 1, got {self.r_lora!r}")
        for option, unset in (
            ("init", "identity"),
            ("relu", "diagonal"),
            ("lora_alpha", None),
            ("lora_qv_only", False),
        ):
            if getattr(self, option) != unset and option not in spec.options:
                raise ValueError(
                    f"AdapterConfig.{option}={getattr(self, option)!r} has no meaning for adapter {self.name!r}"
                )
        if self.lora_alpha is not None:
            self.lora_alpha = float(self.lora_alpha)
            if not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
                raise ValueError(f"AdapterConfig.lora_alpha must be > 0 or null, got {self.lora_alpha}")
        if self.reg_weight is None:
            self.reg_weight = spec.default_reg_weight
        self.reg_weight = float(self.reg_weight)
        if not math.isfinite(self.reg_weight) or self.reg_weight < 0:
            raise ValueError(f"AdapterConfig.reg_weight must be a finite number >= 0, got {self.reg_weight}")
        for flag in EXTRA_FLAGS:
            value = getattr(self, flag)
            if value is None:
                value = spec.default_extras.get(flag, False)
            if not isinstance(value, bool):
                raise ValueError(f"AdapterConfig.{flag} must be true, false or null, got {value!r}")
            if (
                spec.trains_encoder
                and flag in ("train_norms", "train_pos_embed", "train_rel_pos")
                and not value
            ):
                raise ValueError(
                    f"AdapterConfig.{flag}: adapter 'full' trains the whole encoder; it cannot be false"
                )
            setattr(self, flag, value)
        for flag in ("adapt_neck", "lora_qv_only"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"AdapterConfig.{flag} must be true or false, got {getattr(self, flag)!r}")
        if int(self.version) > CONFIG_VERSION:
            raise ValueError(
                f"AdapterConfig.version {self.version} is newer than this salt_seg ({CONFIG_VERSION})"
            )

    def _resolve_rank(self, spec: AdapterMethod) -> None:
        given: Any = self.rank  # as written: one spec, or a per-layer-type mapping of them
        if given is None:
            self.rank = copy.deepcopy(spec.default_rank)
            return
        if not spec.uses_rank:
            raise ValueError(
                f"AdapterConfig.rank: adapter {self.name!r} has no rank to set "
                f"({'it adapts every singular value' if self.name == 'ssam' else 'use r_lora'}); got {self.rank!r}"
            )
        if not isinstance(given, dict) or set(given) <= {"fraction", "energy"}:
            given = {"default": given}
        # an explicit default overrides every per-type default
        merged: dict[str, RankSpec] = {} if "default" in given else copy.deepcopy(spec.default_rank or {})
        for key, value in given.items():
            if key not in (*LAYER_TYPES, "default"):
                raise ValueError(
                    f"AdapterConfig.rank: unknown layer type {key!r}; valid: {[*LAYER_TYPES, 'default']}"
                )
            merged[key] = parse_rank_spec(value, f"rank.{key}")
        self.rank = merged

    # -- queries ---------------------------------------------------------------------------------------------

    @property
    def all_targets(self) -> list[str]:
        """``targets`` plus the neck patterns when ``adapt_neck`` is set."""
        extra = [t for t in NECK_TARGETS if t not in self.targets] if self.adapt_neck else []
        return [*self.targets, *extra]

    def rank_for(self, module_name: str) -> RankSpec | None:
        """The rank spec for one module (by its layer type, then ``default``); ``None`` if the adapter has none."""
        ranks = cast(dict[str, RankSpec], self.rank or {})  # resolved: a per-layer-type mapping
        kind = layer_type(module_name)
        if kind in ranks:
            return ranks[kind]
        return ranks.get("default")

    def has_energy_rank(self, module_names: Iterable[str]) -> bool:
        """Whether any of these modules takes its rank by energy share (its spectrum is needed first)."""
        return any(isinstance(spec := self.rank_for(n), dict) and "energy" in spec for n in module_names)

    # -- (de)serialisation -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def promote_rank(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw adapter dict whose ``rank`` is a per-layer-type mapping, so ``rank.attn=...`` can be set.

    A scalar rank (``8``) or a bare rule (``{fraction: 0.1}``) becomes ``{"default": ...}``.
    """
    out = dict(d)
    rank = out.get("rank")
    if not isinstance(rank, dict) or set(rank) <= {"fraction", "energy"}:
        out["rank"] = {} if rank is None else {"default": rank}
    return out
