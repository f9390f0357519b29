"""Q-GaLore: GaLore with an INT4 projector, INT8 weights updated by stochastic rounding, and a layer-adaptive
(lazy) refresh interval (Zhang et al., 2024, "Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive
Low-Rank Gradients").

Per projected 2-D weight matrix (the same rule as :mod:`salt_seg.training.galore`: smaller side >= ``min_dim``):

* **INT4 projector.** The rank-``rank`` projector from the gradient's SVD is stored as 4-bit codes (two a byte)
  with a float scale and zero point per group of ``group_size`` consecutive entries (asymmetric min-max
  quantization, round to nearest), and dequantized to project the gradient and to project the update back.
* **INT8 weights with stochastic rounding.** The optimizer owns the matrix as int8 codes with a float scale per
  group of ``group_size`` entries (symmetric: ``scale = max|w| / 127``; the first step quantizes the loaded weight
  to nearest). Each step adds the high-precision update (weight decay and the projected-back Adam step) to the
  dequantized weight and rounds the sum back to int8 *stochastically*: ``q = floor(w / scale + u)``,
  ``u ~ U[0, 1)``, so ``E[q * scale] = w`` and updates far below one quantization step still move the weight on
  average (round-to-nearest would drop them). The dequantized weight is then written into the model's parameter,
  which the forward pass uses. **Memory:** this project's modules hold float weights, so the parameter stays
  fp32 and the int8 copy (1 byte an entry plus one float per group) is *added* to the optimizer state; the saving
  the paper gets from INT8 weights (a model whose weights are stored as int8 and dequantized per layer) is not
  realised here. What is measured is in BENCHMARKS.md (issue 18). ``int8_weights=False`` keeps float weights.
* **Layer-adaptive lazy refresh.** Each matrix starts with a refresh (SVD) every ``update_interval`` steps. At a
  refresh the new projector's leading singular vector is compared with the previous one (absolute cosine
  similarity; a singular vector's sign is arbitrary). After ``patience`` consecutive refreshes with a similarity
  >= ``cos_threshold`` that matrix's interval is multiplied by ``interval_growth`` and the count restarts; a
  refresh below the threshold resets the count. ``svd_counts()`` returns the SVDs done and the number the fixed
  schedule (every ``update_interval`` steps) would have done, the difference being the recomputations saved.

Everything else (Adam's moments in the projected space, decoupled weight decay, plain AdamW for the other tensors)
is as in :class:`salt_seg.training.galore.GaLoreAdamW`; Adam's moments stay fp32 (the paper's 8-bit Adam from
``bitsandbytes`` is not used). All state is tensors and Python numbers, so ``state_dict()`` round-trips through
``torch.load(weights_only=True)``. The stochastic rounding draws from a generator seeded by (``seed``, the
tensor's position in the optimizer, its step), so a resumed run draws the same numbers and continues bit-exactly.

Why not the ``q-galore-torch`` package (1.0): it declares ``transformers`` and ``bitsandbytes`` as requirements
(``pip install q-galore-torch`` would add transformers 5.24 and bitsandbytes 0.50; numpy would stay 2.x), its
``__init__`` imports ``bitsandbytes`` unconditionally (without it: ``ModuleNotFoundError: No module named
'bitsandbytes'``), its optimizer subclasses bitsandbytes' ``Optimizer2State`` and calls ``torch.cuda.synchronize()``
every step (no CPU training), its INT8 weights need the authors' quantized linear layers (not in the package), and
it keeps a ``GaLoreProjector`` Python object in the optimizer state, which ``torch.load(weights_only=True)``
refuses to unpickle, so ``--resume`` could not load it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from salt_seg.training.galore import GaLoreAdamW

__all__ = [
    "QGaLoreAdamW",
    "dequantize_int8",
    "dequantize_minmax",
    "quantize_int8",
    "quantize_minmax",
    "stochastic_round_int8",
]


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x`` flattened, zero-padded to a multiple of ``group_size``, as rows of ``group_size``."""
    flat = x.reshape(-1)
    pad = -flat.numel() % group_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, group_size)


def quantize_minmax(
    x: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max quantization to ``bits`` (<= 8) per group, round to nearest.

    Returns ``(codes, scale, zero)``: uint8 codes (two 4-bit codes a byte when ``bits <= 4``), one float scale and
    zero point per group; ``x ≈ (code - zero) * scale``.
    """
    g = _groups(x.float(), group_size)
    lo, hi = g.amin(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    zero = (-lo / scale).round().clamp(0, qmax)
    codes = (g / scale + zero).round().clamp(0, qmax).to(torch.uint8).reshape(-1)[: x.numel()]
    if bits <= 4:
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        codes = codes[0::2] | (codes[1::2] << 4)
    return codes.contiguous(), scale.reshape(-1), zero.reshape(-1)


def dequantize_minmax(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
    shape: torch.Size,
) -> torch.Tensor:
    """The float tensor of ``shape`` that :func:`quantize_minmax`'s codes stand for."""
    numel = shape.numel()
    if bits <= 4:
        codes = torch.stack([codes & 0xF, codes >> 4], dim=1).reshape(-1)
    g = _groups(codes[:numel].float(), group_size)
    return ((g - zero[:, None]) * scale[:, None]).reshape(-1)[:numel].reshape(shape)


def _int8_scale(g: torch.Tensor) -> torch.Tensor:
    return (g.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)


def quantize_int8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group (``scale = max|x| / 127``), round to nearest: ``(codes, scale)``."""
    g = _groups(x.float(), group_size)
    scale = _int8_scale(g)
    codes = (g / scale).round().clamp(-127, 127).to(torch.int8)
    return codes.reshape(-1)[: x.numel()].contiguous(), scale.reshape(-1)


def stochastic_round_int8(
    x: torch.Tensor, group_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group with stochastic rounding: ``floor(x / scale + u)``, ``u ~ U[0, 1)``.

    Unbiased: ``E[code * scale] = x`` (the scale is a deterministic function of ``x``; ``|x / scale| <= 127``).
    """
    g = _groups(x.float(), group_size)
    scale = _int8_scale(g)
    u = torch.rand(g.shape, generator=generator, device=g.device)
    codes = (g / scale + u).floor_().clamp_(-127, 127).to(torch.int8)
    return codes.reshape(-1)[: x.numel()].contiguous(), scale.reshape(-1)


def dequantize_int8(
    codes: torch.Tensor, scale: torch.Tensor, group_size: int, shape: torch.Size
) -> torch.Tensor:
    """The float tensor of ``shape`` that :func:`quantize_int8`'s codes stand for."""
    numel = shape.numel()
    g = _groups(codes.float(), group_size)
    return (g * scale[:, None]).reshape(-1)[:numel].reshape(shape)


class QGaLoreAdamW(GaLoreAdamW):
    """Q-GaLore AdamW (module docstring).

    Args:
        params: tensors or parameter groups.
        lr / betas / eps / weight_decay: as :class:`torch.optim.AdamW`.
        rank / update_interval / scale / min_dim: as :class:`salt_seg.training.galore.GaLoreAdamW`
            (``update_interval`` is each matrix's starting interval).
        proj_bits: bits of the projector's codes (4: INT4).
        group_size: entries per quantization group (projector and int8 weights).
        int8_weights: keep each projected matrix as int8 codes updated by stochastic rounding.
        cos_threshold / patience / interval_growth: the lazy refresh rule.
        seed: seeds the stochastic rounding.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        rank: int = 128,
        update_interval: int = 200,
        scale: float = 0.25,
        min_dim: int = 64,
        proj_bits: int = 4,
        group_size: int = 256,
        int8_weights: bool = True,
        cos_threshold: float = 0.4,
        patience: int = 5,
        interval_growth: int = 2,
        seed: int = 0,
    ) -> None:
        if min(rank, update_interval, min_dim, group_size, patience) < 1:
            raise ValueError("rank, update_interval, min_dim, group_size and patience must be >= 1")
        if not 2 <= proj_bits <= 8:
            raise ValueError(f"proj_bits must be in 2..8, got {proj_bits}")
        if interval_growth < 1:
            raise ValueError(f"interval_growth must be >= 1, got {interval_growth}")
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_interval=update_interval,
            scale=scale,
            min_dim=min_dim,
            proj_bits=proj_bits,
            group_size=group_size,
            int8_weights=int8_weights,
            cos_threshold=cos_threshold,
            patience=patience,
            interval_growth=interval_growth,
            seed=seed,
        )

    def svd_counts(self) -> tuple[int, int]:
        """``(done, fixed)``: SVDs done so far, and those a fixed refresh every ``update_interval`` steps (GaLore)
        would have done over the same steps; ``fixed - done`` recomputations were saved by the lazy rule."""
        done = fixed = 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "svd_count" in state:
                    steps = int(state["step"].item())
                    done += state["svd_count"]
                    fixed += -(-steps // group["update_interval"])  # refreshes at 0, T, 2T, ... < steps
        return done, fixed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, keeping the integer codes integer (the base class
        casts every state tensor of a float parameter to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(pid, {}).items():
                if isinstance(value, torch.Tensor) and not value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device)

    def _proj(self, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        return dequantize_minmax(
            state["proj_codes"],
            state["proj_scale"],
            state["proj_zero"],
            group["proj_bits"],
            group["group_size"],
            torch.Size(state["proj_shape"].tolist()),
        )

    def _refresh(self, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], step: int) -> None:
        shape = grad.shape
        proj = GaLoreAdamW._projector(grad, min(group["rank"], *shape)).float()
        lead = proj[0] if shape[0] >= shape[1] else proj[:, 0]
        if "lead" in state:
            cos = (lead @ state["lead"]).abs() / (lead.norm() * state["lead"].norm()).clamp_min(1e-12)
            state["stable"] = state["stable"] + 1 if float(cos) >= group["cos_threshold"] else 0
            if state["stable"] >= group["patience"]:
                state["interval"] *= group["interval_growth"]
                state["stable"] = 0
        state["lead"] = lead.clone()
        codes, scale, zero = quantize_minmax(proj, group["proj_bits"], group["group_size"])
        state["proj_codes"], state["proj_scale"], state["proj_zero"] = codes, scale, zero
        state["proj_shape"] = torch.tensor(list(proj.shape))
        state["svd_count"] += 1
        state["next_refresh"] = step + state["interval"]

    def _init_low_rank(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state.update(svd_count=0, interval=group["update_interval"], next_refresh=0, stable=0)
        if group["int8_weights"]:
            state["weight_codes"], state["weight_scale"] = quantize_int8(p, group["group_size"])

    def _projection(
        self, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], step: int
    ) -> torch.Tensor:
        if step >= state["next_refresh"]:
            self._refresh(grad, state, group, step)
        return self._proj(state, group)

    def _apply_low_rank(
        self,
        p: torch.Tensor,
        update: torch.Tensor,
        step_size: float,
        state: dict[str, Any],
        group: dict[str, Any],
        index: int,
        step: int,
    ) -> None:
        """The update on the INT8 codes with stochastic rounding (or GaLore's float update without them)."""
        if not group["int8_weights"]:
            super()._apply_low_rank(p, update, step_size, state, group, index, step)
            return
        gs = group["group_size"]
        w = dequantize_int8(state["weight_codes"], state["weight_scale"], gs, p.shape)
        w.mul_(1 - group["lr"] * group["weight_decay"]).add_(
            update.float(), alpha=-step_size * group["scale"]
        )
        gen = torch.Generator(device=p.device)
        gen.manual_seed(hash((group["seed"], index, step)) & 0x7FFF_FFFF_FFFF_FFFF)
        state["weight_codes"], state["weight_scale"] = stochastic_round_int8(w, gs, gen)
        p.copy_(dequantize_int8(state["weight_codes"], state["weight_scale"], gs, p.shape))
