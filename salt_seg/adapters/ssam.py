"""S-SAM: scale and shift *every* singular value, ``W' = U ReLU(α⊙σ + β) Vᵀ`` (Paranjape et al., SVDSAM).

It is SALT with ``r = k`` (no residual subspace, hence no low-rank term): ``2k`` trainable values per layer.
"""

from __future__ import annotations

from torch import nn

from salt_seg.adapters.salt import SaltLayer
from salt_seg.adapters.svd import SVDFactors


class SSamLayer(SaltLayer):
    """S-SAM around a frozen ``nn.Linear`` / ``nn.Conv2d``.

    Args:
        base_layer: the layer to adapt.
        factors: fp32 thin SVD of its weight.
        compute: ``auto``, ``factored``, ``dense``, ``svd_basis`` (or the layer-only ``reference``).

    Trainable: ``alpha`` (init 1) and ``beta`` (init 0), ``k`` each.
    """

    adapter_name = "ssam"

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, factors: SVDFactors, compute: str = "auto") -> None:
        super().__init__(
            base_layer, factors, rank=factors.k, r_lora=1, init="identity", relu="diagonal", compute=compute
        )

    @staticmethod
    def count(out: int, fan_in: int) -> int:  # type: ignore[override]
        """Trainable parameters for one layer: ``2k``."""
        return 2 * min(out, fan_in)

    def extra_repr(self) -> str:
        return f"k={self.k}, compute={self.compute!r}, merged={self.merged}"
