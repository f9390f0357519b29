"""The wrapper every adapter layer builds on: it holds the frozen base layer and applies an update to it.

A concrete adapter only says what its update is, as a list of :class:`Term` (``ΔW = Σ L·C·R``), plus its
regulariser. This class turns the terms into the factored or the dense-delta forward (see
:mod:`salt_seg.adapters.cost`), folds them into the base weight (``merge``/``unmerge``), and does the same for
``nn.Linear`` and ``nn.Conv2d`` (whose weight is used as the ``co x (ci·kh·kw)`` matrix; the right factor becomes
a ``kh x kw`` convolution and the left a 1x1 convolution, so stride, padding and dilation are kept).
"""

from __future__ import annotations

import logging
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from salt_seg.adapters.cost import TermShape, cheapest, dense_cost, factored_cost
from salt_seg.adapters.factored import fused_linear
from salt_seg.adapters.terms import Term

logger = logging.getLogger(__name__)


class AdapterLayer(nn.Module):
    """Base wrapper around a frozen ``nn.Linear`` or ``nn.Conv2d``; keeps the base layer's forward signature.

    Args:
        base_layer: the layer to adapt (frozen by :func:`~salt_seg.adapters.inject.inject_adapters`).
        compute: ``auto``, ``factored``, ``dense`` or ``reference`` (the last only where a subclass implements
            :meth:`reference_delta`).

    Subclasses implement :meth:`terms`, :meth:`term_shapes` and :meth:`regularization`; only their
    ``nn.Parameter`` tensors are trainable and saved.
    """

    adapter_name = "base"

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, compute: str = "auto") -> None:
        super().__init__()
        if isinstance(base_layer, nn.Conv2d):
            if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
                raise ValueError(
                    f"adapters support Conv2d with groups=1 and zero padding only, got groups={base_layer.groups}, "
                    f"padding_mode={base_layer.padding_mode!r}"
                )
            if isinstance(base_layer.padding, str):
                raise ValueError(f"adapters need a numeric Conv2d padding, got {base_layer.padding!r}")
        elif not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear or nn.Conv2d, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.compute = compute
        self.merged = False
        self._kept_weight: torch.Tensor | None = None
        self._mode_cache: dict[tuple[int, bool], str] = {}

    # -- geometry ----------------------------------------------------------------------------------------------

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base_layer, nn.Conv2d)

    @property
    def _conv(self) -> nn.Conv2d:
        """The wrapped convolution (only called when :attr:`is_conv`)."""
        assert isinstance(self.base_layer, nn.Conv2d)
        return self.base_layer

    def _conv_geometry(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Kernel size, stride, padding and dilation of the wrapped convolution (numeric padding: checked at
        construction)."""
        conv = self._conv
        return cast(
            tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]],
            (conv.kernel_size, conv.stride, conv.padding, conv.dilation),
        )

    @property
    def out_features(self) -> int:
        return int(self.base_layer.weight.shape[0])

    @property
    def fan_in(self) -> int:
        return int(self.base_layer.weight[0].numel())

    @property
    def k(self) -> int:
        return min(self.out_features, self.fan_in)

    def _tokens(self, x: torch.Tensor) -> int:
        """Number of output positions the weight is applied to (``N`` in the cost model)."""
        if not self.is_conv:
            return x.numel() // max(x.shape[-1], 1)
        kernel, stride, padding, dilation = self._conv_geometry()
        h, w = x.shape[-2:]
        oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        return int((x.numel() // max(x.shape[-3] * h * w, 1)) * oh * ow)

    def _project_in(self, x: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return F.linear(x, right)
        _, stride, padding, dilation = self._conv_geometry()
        kernel = right.reshape(right.shape[0], *self.base_layer.weight.shape[1:])
        return F.conv2d(x, kernel, None, stride, padding, dilation)

    def _apply_core(self, h: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
        if core is None:
            return h
        if core.dim() == 1:
            return h * (core.view(-1, 1, 1) if self.is_conv else core)
        return F.conv2d(h, core[:, :, None, None]) if self.is_conv else F.linear(h, core)

    def _project_out(self, h: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, left[:, :, None, None]) if self.is_conv else F.linear(h, left)

    def _apply_weight(self, x: torch.Tensor, weight_matrix: torch.Tensor) -> torch.Tensor:
        weight = weight_matrix.reshape(self.base_layer.weight.shape)
        if self.is_conv:
            return self._conv._conv_forward(x, weight, self.base_layer.bias)
        return F.linear(x, weight, self.base_layer.bias)

    # -- the update ----------------------------------------------------------------------------------------------

    def terms(self) -> list[Term]:
        """The update ``ΔW = Σ L·C·R`` from the current parameters (differentiable, fp32)."""
        raise NotImplementedError

    def term_shapes(self) -> list[TermShape]:
        """Static shapes of :meth:`terms` for the cost model."""
        raise NotImplementedError

    def regularization(self) -> torch.Tensor:
        """This layer's regulariser (unweighted; 0-dim tensor)."""
        raise NotImplementedError

    def reference_delta(self) -> torch.Tensor:
        """``ΔW`` the way the released code computes it (dense rebuild); only SVD adapters that have one."""
        raise ValueError(f"compute='reference' is not available for adapter {self.adapter_name!r}")

    def delta_matrix(self) -> torch.Tensor:
        """``ΔW`` as an ``out x fan_in`` fp32 matrix (differentiable)."""
        if self.compute == "reference":
            return self.reference_delta()
        terms = self.terms()
        if not terms:
            return self.base_layer.weight.new_zeros(self.out_features, self.fan_in, dtype=torch.float32)
        delta = terms[0].dense()
        for t in terms[1:]:
            delta = delta + t.dense()
        return delta

    def get_delta_weight(self) -> torch.Tensor:
        """``ΔW`` in the base weight's shape (``out x in`` or ``co x ci x kh x kw``), fp32, differentiable."""
        return self.delta_matrix().reshape(self.base_layer.weight.shape)

    def mode_costs(self, n: int, training: bool) -> dict[str, float]:
        """Cost-model estimate of each available compute mode for ``n`` tokens (see :mod:`~salt_seg.adapters.cost`)."""
        shapes = self.term_shapes()
        if not shapes:
            return {"factored": 0.0}
        out, fan_in = self.out_features, self.fan_in
        return {
            "factored": factored_cost(shapes, n, out, fan_in, training),
            "dense": dense_cost(shapes, n, out, fan_in, training),
        }

    def compute_mode(self, x: torch.Tensor) -> str:
        """The forward used for input ``x``: the configured mode, or the cost model's pick for ``auto``."""
        if self.compute != "auto":
            return self.compute
        training = torch.is_grad_enabled() and any(p.requires_grad for p in self.adapter_parameters())
        key = (self._tokens(x), training)
        mode = self._mode_cache.get(key)
        if mode is None:
            mode = cheapest(self.mode_costs(*key))
            self._mode_cache[key] = mode
        return mode

    def svd_basis_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole layer in its singular basis; only adapters that hold the full basis (SALT, S-SAM)."""
        raise ValueError(f"compute='svd_basis' is not available for adapter {self.adapter_name!r}")

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The adapter's own parameters (not the base layer's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("base_layer.")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same signature and output shape as the wrapped layer: ``... x in -> ... x out`` (or ``B x C x H x W``)."""
        if self.merged:
            return self.base_layer(x)
        mode = self.compute_mode(x)
        weight = self.base_layer.weight
        if mode in ("dense", "reference"):
            delta = self.delta_matrix()
            return self._apply_weight(x, weight.reshape(self.out_features, -1) + delta.to(weight.dtype))
        if mode == "svd_basis":
            return self.svd_basis_forward(x)
        dtype = self._compute_dtype(x)
        terms = [
            Term(t.left.to(dtype), t.right.to(dtype), t.core.to(dtype) if t.core is not None else None)
            for t in self.terms()
        ]
        if not self.is_conv:
            bias = self.base_layer.bias
            with torch.autocast(x.device.type, enabled=False):
                return fused_linear(
                    x.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None, terms
                )
        y = self.base_layer(x)
        for t in terms:
            h = self._apply_core(self._project_in(x.to(dtype), t.right), t.core)
            y = y + self._project_out(h, t.left).to(y.dtype)
        return y

    @staticmethod
    def _compute_dtype(x: torch.Tensor) -> torch.dtype:
        """``x``'s dtype, or the autocast dtype when autocast is on for its device (factors are fp32)."""
        device = x.device.type
        try:
            if torch.is_autocast_enabled(device):
                return torch.get_autocast_dtype(device)
        except (TypeError, RuntimeError):  # older torch: no per-device query
            pass
        return x.dtype

    # -- merge ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def merge(self, safe_merge: bool = True, keep_copy: bool = False) -> None:
        """Fold ``ΔW`` into the base weight, so the forward is the plain layer's.

        Args:
            safe_merge: check the merged weight is finite before writing it.
            keep_copy: keep the unmerged weight so :meth:`unmerge` restores it bit-exactly (costs its memory).

        Raises:
            ValueError: ``safe_merge`` and the merged weight holds NaN or Inf (nothing is changed).
        """
        if self.merged:
            logger.warning("adapter layer is already merged; nothing to do")
            return
        weight = self.base_layer.weight
        merged = weight.float() + self.get_delta_weight()
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(
                "refusing to merge: the adapted weight holds NaN or Inf values (the adapter diverged)"
            )
        if keep_copy:
            self._kept_weight = weight.detach().clone()
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (restores the kept copy if there is one, else subtracts ``ΔW``)."""
        if not self.merged:
            logger.warning("adapter layer is not merged; nothing to do")
            return
        weight = self.base_layer.weight
        if self._kept_weight is not None:
            weight.copy_(self._kept_weight)
            self._kept_weight = None
        else:
            weight.copy_((weight.float() - self.get_delta_weight()).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"compute={self.compute!r}, merged={self.merged}"
