"""SVFit: only the top-r singular values train, ``W' = W + U_r diag(σ'_r − σ_r) V_rᵀ`` (arXiv 2409.05926).

``r`` is usually given as an energy share (``{"energy": 0.99}``: the top values holding 99% of ``Σσ²``).
"""

from __future__ import annotations

import torch
from torch import nn

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.cost import TermShape
from salt_seg.adapters.svd import SVDFactors
from salt_seg.adapters.terms import Term, frobenius


class SVFitLayer(AdapterLayer):
    """SVFit around a frozen ``nn.Linear`` / ``nn.Conv2d``.

    Args:
        base_layer: the layer to adapt.
        factors: fp32 thin SVD of its weight.
        rank: number of top singular values that train (``1 <= r <= k``).
        compute: ``auto``, ``factored`` or ``dense``.

    Trainable: ``sigma`` (``r``, initialised to ``σ_r``). Buffers: ``U_r``, ``S_r``, ``Vh_r``.
    """

    adapter_name = "svfit"

    U_r: torch.Tensor
    S_r: torch.Tensor
    Vh_r: torch.Tensor

    def __init__(
        self, base_layer: nn.Linear | nn.Conv2d, factors: SVDFactors, rank: int, compute: str = "auto"
    ) -> None:
        super().__init__(base_layer, compute)
        if not 1 <= rank <= factors.k:
            raise ValueError(f"svfit rank must be in [1, k={factors.k}], got {rank}")
        self.rank = int(rank)
        self.register_buffer("U_r", factors.U[:, :rank].contiguous(), persistent=False)
        self.register_buffer("S_r", factors.S[:rank].contiguous(), persistent=False)
        self.register_buffer("Vh_r", factors.Vh[:rank].contiguous(), persistent=False)
        self.sigma = nn.Parameter(factors.S[:rank].clone())

    @staticmethod
    def count(out: int, fan_in: int, rank: int) -> int:
        """Trainable parameters for one layer: ``r``."""
        return rank

    def terms(self) -> list[Term]:
        return [Term(self.U_r, self.Vh_r, self.sigma - self.S_r)]

    def term_shapes(self) -> list[TermShape]:
        return [TermShape(self.rank, self.rank, "diag", core_trainable=True)]

    def regularization(self) -> torch.Tensor:
        """``‖σ'_r − σ_r‖_2`` (unweighted)."""
        return frobenius(self.sigma - self.S_r)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, k={self.k}, {super().extra_repr()}"
