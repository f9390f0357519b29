"""What each adapter method is, as plain data: its name, which config fields mean something for it, its defaults.

``METHODS[name]`` is an :class:`AdapterMethod`. :class:`~salt_seg.adapters.config.AdapterConfig` validates and
fills its defaults from here; :mod:`salt_seg.adapters.registry` adds each method's layer builder and parameter
count. This module imports no layer and no torch, so a config is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
class AdapterMethod:
    """One adapter method's facts.

    Attributes:
        name: registry key.
        description: one line for ``--help`` and ``params``.
        wraps_layers: wraps target layers; ``False`` for ``full``/``none``, which only decide what trains.
        needs_svd: the builder needs the layer's SVD factors.
        uses_rank / uses_r_lora: which rank fields mean something for this adapter.
        options: the other config options it reads (``init``, ``relu``, ``lora_alpha``, ``lora_qv_only``).
        min_rank / max_rank_offset: valid resolved ranks are ``min_rank <= r <= k - max_rank_offset``.
        default_rank / default_r_lora / default_reg_weight / default_extras: config defaults.
        holds_full_basis: keeps the whole singular basis of each weight (``compute="svd_basis"``; SALT's
            released dense rebuild, :meth:`~salt_seg.adapters.salt.SaltLayer.reference_delta`).
        trains_encoder: the whole image encoder trains (``full``).
    """

    name: str
    description: str
    wraps_layers: bool = True
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
    holds_full_basis: bool = False
    trains_encoder: bool = False


METHODS: dict[str, AdapterMethod] = {
    "salt": AdapterMethod(
        name="salt",
        description="scale/shift the top-r singular values + low-rank X·Y in the residual subspace (SALT)",
        needs_svd=True,
        uses_rank=True,
        uses_r_lora=True,
        options=frozenset({"init", "relu"}),
        # the released ranks (attention 760, MLP 50, neck 250 on vit_b) as fractions of k, so smaller variants scale
        default_rank={"attn": {"fraction": 0.99}, "mlp": {"fraction": 0.065}, "neck": {"fraction": 0.977}},
        default_r_lora=4,
        default_reg_weight=0.01,  # the released training script's reg_multiplier
        holds_full_basis=True,
    ),
    "ssam": AdapterMethod(
        name="ssam",
        description="scale/shift every singular value (S-SAM)",
        needs_svd=True,
        holds_full_basis=True,
    ),
    "svfit": AdapterMethod(
        name="svfit",
        description="train only the top-r singular values (SVFit); r by energy share by default",
        needs_svd=True,
        uses_rank=True,
        min_rank=1,
        default_rank={"default": {"energy": 0.99}},
    ),
    "lora": AdapterMethod(
        name="lora",
        description="LoRA B·A (B = 0 at init); lora_qv_only adapts q and v of the fused qkv (SAMed)",
        uses_r_lora=True,
        options=frozenset({"lora_alpha", "lora_qv_only"}),
        default_r_lora=4,
    ),
    "effort": AdapterMethod(
        name="effort",
        description="freeze the top-r principal components, train the residual U, σ, V (Effort)",
        needs_svd=True,
        uses_rank=True,
        max_rank_offset=1,
        default_rank={"default": {"fraction": 0.995}},  # k - r = 4 trained components on vit_b
        default_reg_weight=1.0,
    ),
    "full": AdapterMethod(
        name="full",
        description="full fine-tuning of the image encoder",
        wraps_layers=False,
        trains_encoder=True,
        default_extras={**PAPER_EXTRAS, "train_rel_pos": True},
    ),
    "none": AdapterMethod(
        name="none",
        description="frozen image encoder; only the mask decoder and prompt tokens train",
        wraps_layers=False,
        default_extras={
            **PAPER_EXTRAS,
            "train_norms": False,
            "train_pos_embed": False,
            "train_mask_decoder": True,
        },
    ),
}


def get_adapter_method(name: str) -> AdapterMethod:
    """Look an adapter method up by name.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown adapter {name!r}; valid: {sorted(METHODS)}") from None
