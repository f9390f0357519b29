"""SAM model core: variant registry, differentiable batched model, checkpoint loading, predictor."""

from __future__ import annotations

from salt_seg.model.sam import SamModel
from salt_seg.model.variants import VARIANTS, VariantSpec, build_model, get_variant

__all__ = ["SamModel", "VARIANTS", "VariantSpec", "build_model", "get_variant"]
