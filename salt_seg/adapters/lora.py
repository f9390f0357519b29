"""LoRA: ``W' = W + s·B A`` with ``B`` zero at init (Hu et al.); SAMed's setting adapts only q and v of a fused qkv.

``s = lora_alpha / r`` (``lora_alpha=None`` gives ``s = 1``, as SAMed). With ``qv_only`` on a fused ``qkv``
layer (``out = 3·d``) the update is ``[B_q A_q; 0; B_v A_v]``: ``2r(in + d)`` trainable values instead of
``r(in + 3d)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.cost import TermShape
from salt_seg.adapters.terms import Term, low_rank_frobenius


class LoraLayer(AdapterLayer):
    """LoRA around a frozen ``nn.Linear`` / ``nn.Conv2d``.

    Args:
        base_layer: the layer to adapt.
        r_lora: LoRA rank ``r``.
        lora_alpha: scaling numerator; ``None`` for scale 1.
        qv_only: adapt only the q and v thirds of a fused qkv output (needs ``out % 3 == 0``).
        compute: ``auto``, ``factored`` or ``dense``.

    Trainable: ``lora_A`` (``r x fan_in``, or ``2r x fan_in`` for qv), ``lora_B`` (``out x r``), or ``lora_B_q``
    and ``lora_B_v`` (``d x r`` each) for qv.
    """

    adapter_name = "lora"

    def __init__(
        self,
        base_layer: nn.Linear | nn.Conv2d,
        r_lora: int = 4,
        lora_alpha: float | None = None,
        qv_only: bool = False,
        compute: str = "auto",
    ) -> None:
        super().__init__(base_layer, compute)
        if r_lora < 1:
            raise ValueError(f"r_lora must be >= 1, got {r_lora}")
        out, fan_in = self.out_features, self.fan_in
        if qv_only and out % 3:
            raise ValueError(f"lora_qv_only needs a fused qkv layer (out divisible by 3), got out={out}")
        self.r_lora, self.qv_only = int(r_lora), bool(qv_only)
        self.scaling = 1.0 if lora_alpha is None else float(lora_alpha) / r_lora
        device = base_layer.weight.device
        a = torch.empty((2 if qv_only else 1) * r_lora, fan_in, device=device)
        for rows in a.split(r_lora):  # kaiming-uniform as nn.Linear / peft, per block
            nn.init.kaiming_uniform_(rows, a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        if qv_only:
            d = out // 3
            self.lora_B_q = nn.Parameter(torch.zeros(d, r_lora, device=device))
            self.lora_B_v = nn.Parameter(torch.zeros(d, r_lora, device=device))
        else:
            self.lora_B = nn.Parameter(torch.zeros(out, r_lora, device=device))

    @staticmethod
    def count(out: int, fan_in: int, r_lora: int, qv_only: bool = False) -> int:
        """Trainable parameters for one layer: ``r(in + out)``, or ``2r(in + out/3)`` for qv."""
        return 2 * r_lora * (fan_in + out // 3) if qv_only else r_lora * (fan_in + out)

    def left(self) -> torch.Tensor:
        """``s·B`` as ``out x r`` (``out x 2r`` block matrix ``[B_q 0; 0 0; 0 B_v]`` for qv)."""
        if not self.qv_only:
            return self.lora_B * self.scaling
        d, r = self.lora_B_q.shape
        top = F.pad(self.lora_B_q, (0, r, 0, 2 * d))
        bottom = F.pad(self.lora_B_v, (r, 0, 2 * d, 0))
        return (top + bottom) * self.scaling

    def terms(self) -> list[Term]:
        return [Term(self.left(), self.lora_A)]

    def term_shapes(self) -> list[TermShape]:
        q = self.lora_A.shape[0]
        return [TermShape(q, q, "none", left_trainable=True, right_trainable=True)]

    def regularization(self) -> torch.Tensor:
        """``‖s·B A‖_F`` (unweighted; LoRA's default weight is 0)."""
        return low_rank_frobenius(self.left(), self.lora_A)

    def extra_repr(self) -> str:
        return (
            f"r_lora={self.r_lora}, scaling={self.scaling:g}, qv_only={self.qv_only}, {super().extra_repr()}"
        )
