"""The adapter registry: one entry per method, holding its layer builder, parameter count and defaults.

``ADAPTERS[name]`` is an :class:`AdapterSpec`. Configs hold the name only; an unknown name raises ``ValueError``
listing the valid ones. ``full`` and ``none`` wrap nothing: they only decide which parts of SAM train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from salt_seg.adapters.effort import EffortLayer
from salt_seg.adapters.lora import LoraLayer
from salt_seg.adapters.salt import SaltLayer
from salt_seg.adapters.ssam import SSamLayer
from salt_seg.adapters.svfit import SVFitLayer

if TYPE_CHECKING:
    from salt_seg.adapters.base import AdapterLayer
    from salt_seg.adapters.config import AdapterConfig
    from salt_seg.adapters.svd import SVDFactors

#: builder(base_layer, factors or None, resolved rank or None, config, module name) -> wrapper
Builder = Callable[[nn.Module, "SVDFactors | None", "int | None", "AdapterConfig", str], "AdapterLayer"]
#: count(out, fan_in, resolved rank or None, config, module name) -> trainable parameters of one wrapped layer
Counter = Callable[[int, int, "int | None", "AdapterConfig", str], int]

#: the paper's choice for what else trains: LayerNorms, position embedding and the (text -> here learned) prompt
PAPER_EXTRAS: dict[str, bool] = {
    "train_norms": True,
    "train_pos_embed": True,
    "train_rel_pos": False,
    "train_mask_decoder": False,
    "train_prompt_encoder": False,
    "train_class_tokens": True,
    # not in the paper: the full-resolution branch (where the model has one) trains with every adapter
    "train_hires": True,
}


@dataclass(frozen=True)
class AdapterSpec:
    """One registered adapter.

    Attributes:
        name: registry key.
        description: one line for ``--help`` and ``params``.
        build: makes the wrapper for one target layer; ``None`` for ``full``/``none`` (nothing is wrapped).
        count: trainable parameters of one wrapped layer, from shapes and the resolved rank only.
        needs_svd: the builder needs the layer's SVD factors.
        uses_rank / uses_r_lora: which rank fields mean something for this adapter.
        options: the other config options it reads (``init``, ``relu``, ``lora_alpha``, ``lora_qv_only``).
        min_rank / max_rank_offset: valid resolved ranks are ``min_rank <= r <= k - max_rank_offset``.
        default_rank / default_r_lora / default_reg_weight / default_extras: config defaults.
        supports_reference_compute: has the released code's dense rebuild (``compute="reference"``).
        trains_encoder: the whole image encoder trains (``full``).
    """

    name: str
    description: str
    build: Builder | None
    count: Counter | None
    needs_svd: bool = False
    uses_rank: bool = False
    uses_r_lora: bool = False
    options: frozenset[str] = frozenset()
    min_rank: int = 0
    max_rank_offset: int = 0
    default_rank: dict[str, Any] | None = None
    default_r_lora: int | None = None
    default_reg_weight: float = 0.0
    default_extras: dict[str, bool] = field(default_factory=lambda: dict(PAPER_EXTRAS))
    supports_reference_compute: bool = False
    trains_encoder: bool = False

    @property
    def wraps_layers(self) -> bool:
        return self.build is not None


def _qv(config: AdapterConfig, name: str) -> bool:
    return bool(config.lora_qv_only) and name.endswith("qkv")


ADAPTERS: dict[str, AdapterSpec] = {
    "salt": AdapterSpec(
        name="salt",
        description="scale/shift the top-r singular values + low-rank X·Y in the residual subspace (SALT)",
        build=lambda m, f, r, c, n: SaltLayer(m, f, r, c.r_lora, c.init, c.relu, c.compute),  # type: ignore[arg-type]
        count=lambda o, i, r, c, n: SaltLayer.count(o, i, r, c.r_lora),  # type: ignore[arg-type]
        needs_svd=True,
        uses_rank=True,
        uses_r_lora=True,
        options=frozenset({"init", "relu"}),
        # the released ranks (attention 760, MLP 50, neck 250 on vit_b) as fractions of k, so smaller variants scale
        default_rank={"attn": {"fraction": 0.99}, "mlp": {"fraction": 0.065}, "neck": {"fraction": 0.977}},
        default_r_lora=4,
        default_reg_weight=0.01,  # the released training script's reg_multiplier
        supports_reference_compute=True,
    ),
    "ssam": AdapterSpec(
        name="ssam",
        description="scale/shift every singular value (S-SAM)",
        build=lambda m, f, r, c, n: SSamLayer(m, f, c.compute),  # type: ignore[arg-type]
        count=lambda o, i, r, c, n: SSamLayer.count(o, i),
        needs_svd=True,
        supports_reference_compute=True,
    ),
    "svfit": AdapterSpec(
        name="svfit",
        description="train only the top-r singular values (SVFit); r by energy share by default",
        build=lambda m, f, r, c, n: SVFitLayer(m, f, r, c.compute),  # type: ignore[arg-type]
        count=lambda o, i, r, c, n: SVFitLayer.count(o, i, r),  # type: ignore[arg-type]
        needs_svd=True,
        uses_rank=True,
        min_rank=1,
        default_rank={"default": {"energy": 0.99}},
    ),
    "lora": AdapterSpec(
        name="lora",
        description="LoRA B·A (B = 0 at init); lora_qv_only adapts q and v of the fused qkv (SAMed)",
        build=lambda m, f, r, c, n: LoraLayer(m, c.r_lora, c.lora_alpha, _qv(c, n), c.compute),  # type: ignore[arg-type]
        count=lambda o, i, r, c, n: LoraLayer.count(o, i, c.r_lora, _qv(c, n)),  # type: ignore[arg-type]
        uses_r_lora=True,
        options=frozenset({"lora_alpha", "lora_qv_only"}),
        default_r_lora=4,
    ),
    "effort": AdapterSpec(
        name="effort",
        description="freeze the top-r principal components, train the residual U, σ, V (Effort)",
        build=lambda m, f, r, c, n: EffortLayer(m, f, r, c.compute),  # type: ignore[arg-type]
        count=lambda o, i, r, c, n: EffortLayer.count(o, i, r),  # type: ignore[arg-type]
        needs_svd=True,
        uses_rank=True,
        max_rank_offset=1,
        default_rank={"default": {"fraction": 0.995}},  # k - r = 4 trained components on vit_b
        default_reg_weight=1.0,
    ),
    "full": AdapterSpec(
        name="full",
        description="full fine-tuning of the image encoder",
        build=None,
        count=None,
        trains_encoder=True,
        default_extras={**PAPER_EXTRAS, "train_rel_pos": True},
    ),
    "none": AdapterSpec(
        name="none",
        description="frozen image encoder; only the mask decoder and prompt tokens train",
        build=None,
        count=None,
        default_extras={
            **PAPER_EXTRAS,
            "train_norms": False,
            "train_pos_embed": False,
            "train_mask_decoder": True,
        },
    ),
}


def get_adapter_spec(name: str) -> AdapterSpec:
    """Look an adapter up by name.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    try:
        return ADAPTERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown adapter {name!r}; valid: {sorted(ADAPTERS)}") from None
