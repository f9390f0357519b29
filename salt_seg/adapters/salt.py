"""SALT: scale and shift the top-r singular values, low-rank update in the residual singular subspace.

With the thin SVD ``W = U diag(σ) Vᵀ`` (``k = min(out, in)``) split at ``r`` into the top ``U_r, σ_r, V_r`` and
the residual ``U_res, σ_res, V_res``:

    σ'_r = ReLU(α ⊙ σ_r + β)                      α (init 1), β (init 0): trainable r-vectors
    W' − W = U_r diag(σ'_r − σ_r) V_rᵀ + U_res X Y V_resᵀ      X: (k−r) x r_lora, Y: r_lora x (k−r)

``init="identity"`` starts X at zero (Y ~ N(0, 0.01²)), so W' = W exactly at step 0, like LoRA's B = 0;
``init="reference"`` draws both from N(0, 0.01²) as the released code does.

``relu="reference"`` reproduces the released code's element-wise ReLU over the whole modified k x k matrix
``Σ' = diag(α⊙σ_r+β, σ_res) + [0 ⊕ X Y]``: its off-diagonal blocks are zero, so the result is the top-r ReLU above
plus ``U_res (ReLU(diag(σ_res) + X Y) − diag(σ_res)) V_resᵀ`` — negative entries of ``X Y`` off the diagonal are
zeroed, which the paper's "keep singular values non-negative" does not ask for. ``relu="diagonal"`` (default)
applies the ReLU to the modified top-r singular values only.

The released code rebuilds ``U·ReLU(Σ')·Vᵀ`` densely (two k x k-sized products) on every forward, inference
included; here that form is :meth:`SaltLayer.reference_delta`, used by the faithfulness tests and, as the layer
attribute ``compute = "reference"`` (not a configuration value), by the benchmark that times the released code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.cost import TermShape, svd_basis_cost
from salt_seg.adapters.svd import SVDFactors
from salt_seg.adapters.terms import Term, frobenius, low_rank_frobenius

REFERENCE_INIT_STD = 0.01


class _SvdBasisLinear(torch.autograd.Function):
    """``y = ((x Vᵀ) ⊙ s + ((x V_resᵀ) Yᵀ) Xᵀ ⊕ 0) U ᵀ + b`` for ``x`` of shape ``N x in`` (``relu="diagonal"``).

    ``s`` is the modified spectrum ``[ReLU(α⊙σ_r+β), σ_res]``; ``X``, ``Y`` may be ``None`` (``r = k``). The same
    products autograd would run for :meth:`SaltLayer.svd_basis_forward`, in fewer passes over the ``N x k``
    activations: ``g`` is written once (no per-block outputs and concatenation), the backward writes the
    ``N x k`` input-side gradient once instead of zero-padding each block's gradient and summing them, and only
    ``h = x Vᵀ`` (plus the ``N x r_lora`` intermediate) is saved. Inputs after ``x``: ``Vh`` (``k x in``),
    ``Ut`` (``k x out``), ``bias``, ``top`` (``r``, carries the gradient to α, β), ``s_res``, ``X``, ``Y``.
    """

    @staticmethod
    def forward(ctx, x, Vh, Ut, bias, top, s_res, X, Y):
        r = top.shape[0]
        h = x @ Vh.T  # N x k
        s = torch.cat([top, s_res]) if s_res.numel() else top
        g = h * s
        t = None
        if X is not None:
            t = h[:, r:] @ Y.T  # N x q
            g[:, r:].addmm_(t, X.T)
        y = torch.addmm(bias, g, Ut) if bias is not None else g @ Ut
        ctx.r = r
        ctx.has_bias = bias is not None
        ctx.save_for_backward(h, t, s, Vh, Ut, X, Y)
        return y

    @staticmethod
    def backward(ctx, gy):
        h, t, s, Vh, Ut, X, Y = ctx.saved_tensors
        r = ctx.r
        need = ctx.needs_input_grad
        gg = gy @ Ut.T  # N x k
        grad_top = (gg[:, :r] * h[:, :r]).sum(0) if need[4] else None
        # gg becomes the gradient of h in place, block by block (the residual block is read unscaled first)
        gg[:, :r].mul_(s[:r])
        grad_X = grad_Y = None
        if X is not None:
            gg_res, h_res = gg[:, r:], h[:, r:]
            ggx = gg_res @ X  # N x q
            # short-wide outputs (q x m), transposed where needed: the tall-skinny forms are far slower on CPU
            grad_X = (t.T @ gg_res).T if need[6] else None
            grad_Y = ggx.T @ h_res if need[7] else None
            gg_res.mul_(s[r:])
            gg_res.addmm_(ggx, Y)
        gh = gg
        grad_x = gh @ Vh if need[0] else None
        grad_bias = gy.sum(0) if ctx.has_bias and need[3] else None
        return grad_x, None, None, grad_bias, grad_top, None, grad_X, grad_Y


class SaltLayer(AdapterLayer):
    """SALT around a frozen ``nn.Linear`` / ``nn.Conv2d``.

    Args:
        base_layer: the layer to adapt.
        factors: fp32 thin SVD of its weight (as ``out x fan_in``).
        rank: ``r``, the number of top singular values that get a scale and a shift (``0 <= r <= k``).
        r_lora: rank of the residual update ``X Y`` (may exceed ``k − r``).
        init: ``identity`` or ``reference`` (see the module docstring).
        relu: ``diagonal`` or ``reference``.
        compute: ``auto``, ``factored``, ``dense``, ``svd_basis`` or ``reference``.

    Trainable: ``alpha``, ``beta`` (``r``), ``X`` (``(k−r) x r_lora``), ``Y`` (``r_lora x (k−r)``): ``2r + 2(k−r)·r_lora``.
    Buffers (not saved): ``Ut`` (``k x out``), ``S`` (``k``), ``Vh`` (``k x fan_in``).
    """

    adapter_name = "salt"
    Ut: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    def __init__(
        self,
        base_layer: nn.Linear | nn.Conv2d,
        factors: SVDFactors,
        rank: int,
        r_lora: int = 4,
        init: str = "identity",
        relu: str = "diagonal",
        compute: str = "auto",
    ) -> None:
        super().__init__(base_layer, compute)
        k = factors.k
        if not 0 <= rank <= k:
            raise ValueError(f"rank must be in [0, k={k}], got {rank}")
        if r_lora < 1:
            raise ValueError(f"r_lora must be >= 1, got {r_lora}")
        if init not in ("identity", "reference") or relu not in ("diagonal", "reference"):
            raise ValueError(
                f"init must be identity|reference and relu diagonal|reference, got {init!r}, {relu!r}"
            )
        self.rank, self.r_lora, self.init, self.relu = int(rank), int(r_lora), init, relu
        r, m = self.rank, k - self.rank
        # the whole basis is kept once (Uᵀ stored row-major so U_r, U_res are cheap views) for the SVD-basis
        # forward and the reference rebuild; the factored and dense forms use the views
        self.register_buffer("Ut", factors.U.T.contiguous(), persistent=False)
        self.register_buffer("S", factors.S.contiguous(), persistent=False)
        self.register_buffer("Vh", factors.Vh.contiguous(), persistent=False)
        device = factors.S.device
        self.alpha: nn.Parameter | None = nn.Parameter(torch.ones(r, device=device)) if r else None
        self.beta: nn.Parameter | None = nn.Parameter(torch.zeros(r, device=device)) if r else None
        self.X: nn.Parameter | None = None
        self.Y: nn.Parameter | None = None
        if m:
            y = torch.randn(self.r_lora, m, device=device) * REFERENCE_INIT_STD
            x = torch.randn(m, self.r_lora, device=device) * REFERENCE_INIT_STD
            self.X = nn.Parameter(x if init == "reference" else torch.zeros_like(x))
            self.Y = nn.Parameter(y)

    # views into the stored basis: top-r and residual singular vectors / values
    @property
    def U_r(self) -> torch.Tensor:
        return self.Ut[: self.rank].T

    @property
    def U_res(self) -> torch.Tensor:
        return self.Ut[self.rank :].T

    @property
    def S_r(self) -> torch.Tensor:
        return self.S[: self.rank]

    @property
    def S_res(self) -> torch.Tensor:
        return self.S[self.rank :]

    @property
    def Vh_r(self) -> torch.Tensor:
        return self.Vh[: self.rank]

    @property
    def Vh_res(self) -> torch.Tensor:
        return self.Vh[self.rank :]

    @staticmethod
    def count(out: int, fan_in: int, rank: int, r_lora: int) -> int:
        """Trainable parameters for one layer: ``2r + 2(k−r)·r_lora``."""
        k = min(out, fan_in)
        return 2 * rank + (2 * (k - rank) * r_lora if k > rank else 0)

    # -- the update ----------------------------------------------------------------------------------------------

    def _scale_shift(self) -> tuple[nn.Parameter, nn.Parameter]:
        """``(α, β)``; only called when ``r > 0``."""
        assert self.alpha is not None and self.beta is not None, "no top singular values (r = 0)"
        return self.alpha, self.beta

    def _low_rank(self) -> tuple[nn.Parameter, nn.Parameter]:
        """``(X, Y)``; only called when ``r < k``."""
        assert self.X is not None and self.Y is not None, "no residual block (r = k)"
        return self.X, self.Y

    def top_delta(self) -> torch.Tensor | None:
        """``σ'_r − σ_r = ReLU(α⊙σ_r + β) − σ_r`` (``r``), or ``None`` when ``r = 0``."""
        if self.alpha is None:
            return None
        alpha, beta = self._scale_shift()
        return F.relu(alpha * self.S_r + beta) - self.S_r

    def residual_core(self) -> torch.Tensor:
        """``(k−r) x (k−r)`` change of the residual block of Σ: ``X Y``, or for ``relu="reference"``
        ``ReLU(diag(σ_res) + X Y) − diag(σ_res)``."""
        X, Y = self._low_rank()
        xy = X @ Y
        if self.relu == "reference":
            base = torch.diag(self.S_res)
            return F.relu(base + xy) - base
        return xy

    def terms(self) -> list[Term]:
        out: list[Term] = []
        top = self.top_delta()
        if top is not None:
            out.append(Term(self.U_r, self.Vh_r, top))
        if self.X is not None:
            m = self.X.shape[0]
            if self.relu == "reference" or self.r_lora >= m:
                out.append(Term(self.U_res, self.Vh_res, self.residual_core()))
            else:  # rank-r_lora form: (U_res X)(Y V_resᵀ)
                X, Y = self._low_rank()
                # U_res X computed as (Xᵀ U_resᵀ)ᵀ from the row-major Uᵀ: the same products, ~10x faster on the
                # CPU than the column-major U_res times a 4-column X (and likewise for its gradient)
                out.append(Term((X.T.contiguous() @ self.Ut[self.rank :]).T, Y @ self.Vh_res))
        return out

    def term_shapes(self) -> list[TermShape]:
        shapes: list[TermShape] = []
        if self.rank:
            shapes.append(TermShape(self.rank, self.rank, "diag", core_trainable=True))
        if self.X is not None:
            m, q = self.X.shape[0], self.r_lora
            if self.relu == "reference" or q >= m:
                shapes.append(TermShape(m, m, "matrix", core_trainable=True, prep=m * q * m))
            else:
                prep = self.out_features * m * q + q * m * self.fan_in
                shapes.append(TermShape(q, q, "none", left_trainable=True, right_trainable=True, prep=prep))
        return shapes

    def modified_sigma(self) -> torch.Tensor:
        """The released code's ``k x k`` matrix after its ReLU: ``ReLU(Σ')`` (reference) or Σ' with the ReLU on
        the top-r diagonal only (diagonal)."""
        k, r = self.k, self.rank
        if self.alpha is not None:
            alpha, beta = self._scale_shift()
            top = alpha * self.S_r + beta
        else:
            top = self.S_r
        if self.relu == "diagonal":
            top = F.relu(top)
        sigma = torch.diag(torch.cat([top, self.S_res]))
        if self.X is not None:
            X, Y = self._low_rank()
            sigma = sigma + F.pad(X @ Y, (r, 0, r, 0))
        if self.relu == "reference":
            sigma = F.relu(sigma)
        assert sigma.shape == (k, k)
        return sigma

    def reference_delta(self) -> torch.Tensor:
        """``U (ReLU(Σ') − Σ) Vᵀ`` rebuilt densely, as the released code does on every forward.

        Costs ``out·k·k + out·k·in`` multiply-adds per forward (and twice that in backward); equal to
        :meth:`delta_matrix` of the other compute modes up to rounding.
        """
        return (self.Ut.T @ (self.modified_sigma() - torch.diag(self.S))) @ self.Vh

    # -- the SVD-basis forward -----------------------------------------------------------------------------------

    def svd_basis_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = U Σ' Vᵀ x + b`` computed in the singular basis: ``h = Vᵀx`` (k values per token), scaled by the
        modified singular values (plus the residual low-rank block), mapped back by ``U``.

        No base GEMM and no weight gradient: for training at ``r`` near ``k`` this is the cheapest exact form.
        It reproduces ``W`` only up to the fp32 SVD reconstruction error (~1e-6 relative), unlike the factored and
        dense forms, which add ``ΔW`` to the untouched ``W``.
        """
        dtype = self._compute_dtype(x)
        x = x.to(dtype)
        if not self.is_conv and self.relu == "diagonal":
            return self._svd_basis_linear(x, dtype)
        h = self._project_in(x, self.Vh.to(dtype))
        cdim = 1 if self.is_conv else -1
        parts = []
        if self.rank:
            alpha, beta = self._scale_shift()
            top = F.relu(alpha * self.S_r + beta)
            parts.append(self._apply_core(h.narrow(cdim, 0, self.rank), top.to(dtype)))
        if self.X is not None:
            X, Y = self._low_rank()
            h_res = h.narrow(cdim, self.rank, self.k - self.rank)
            if self.relu == "reference":
                core = F.relu(torch.diag(self.S_res) + X @ Y)
                parts.append(self._apply_core(h_res, core.to(dtype)))
            else:
                low = self._apply_core(self._apply_core(h_res, Y.to(dtype)), X.to(dtype))
                parts.append(self._apply_core(h_res, self.S_res.to(dtype)) + low)
        g = torch.cat(parts, cdim) if len(parts) > 1 else parts[0]
        U = self.Ut.T.to(dtype)
        bias = self.base_layer.bias
        bias = bias.to(dtype) if bias is not None else None
        if self.is_conv:
            return F.conv2d(g, U.contiguous()[:, :, None, None], bias)
        return F.linear(g, U, bias)

    def _svd_basis_linear(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`svd_basis_forward` for a linear layer with the diagonal ReLU, through :class:`_SvdBasisLinear`."""
        if self.rank:
            alpha, beta = self._scale_shift()
            top = F.relu(alpha * self.S_r + beta).to(dtype)
        else:
            top = self.S.new_zeros(0, dtype=dtype)
        X = Y = None
        if self.X is not None:
            X, Y = (p.to(dtype) for p in self._low_rank())
        bias = self.base_layer.bias
        bias = bias.to(dtype) if bias is not None else None
        lead = x.shape[:-1]
        with torch.autocast(x.device.type, enabled=False):  # every operand is already in ``dtype``
            y = _SvdBasisLinear.apply(
                x.reshape(-1, x.shape[-1]),
                self.Vh.to(dtype),
                self.Ut.to(dtype),
                bias,
                top,
                self.S_res.to(dtype),
                X,
                Y,
            )
        return y.reshape(*lead, self.out_features)

    def mode_costs(self, n: int, training: bool) -> dict[str, float]:
        costs = super().mode_costs(n, training)
        m, q = self.k - self.rank, self.r_lora
        extra = 0.0
        if self.X is not None:
            extra = n * m * m + m * m * q if self.relu == "reference" else 2 * n * m * q
        if training:  # inference stays on the forms that add ΔW to the untouched W (and merges anyway)
            costs["svd_basis"] = svd_basis_cost(self.k, extra, n, self.out_features, self.fan_in, training)
        return costs

    def regularization(self) -> torch.Tensor:
        """The paper's ``‖Σ'_r − Σ_r‖_F + ‖X Y‖_F`` (unweighted)."""
        reg = self.S_r.new_zeros(())
        top = self.top_delta()
        if top is not None:
            reg = reg + frobenius(top)
        if self.X is not None:
            reg = reg + low_rank_frobenius(*self._low_rank())
        return reg

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, k={self.k}, r_lora={self.r_lora}, init={self.init!r}, relu={self.relu!r}, "
            f"{super().extra_repr()}"
        )
