"""Fused factored forward for linear layers: ``y = x Wᵀ + b + Σ_i ((x R_iᵀ) C_i) L_iᵀ`` in two GEMMs.

Every term's right factors are stacked into one ``B x in`` matrix and every left factor into one ``out x A``
matrix, so the update reads ``x`` once and is accumulated into the base output by one ``addmm``; the backward
reads the output gradient once for the input path and computes weight gradients only for the factors that are
trainable (autograd through a concatenation would also compute them for the frozen singular vectors). For the
small ranks where the factored form is used, these passes over the ``N x out`` activations, not the FLOPs,
are what it costs.
"""

from __future__ import annotations

import torch

from salt_seg.adapters.terms import Term


def _apply_core(h: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
    if core is None:
        return h
    if core.dim() == 1:
        return h * core
    return h @ core.T


class _FusedLowRank(torch.autograd.Function):
    """``y = addmm(b, x, Wᵀ) + g Lᵀ`` with ``g = [core_i(x R_iᵀ)]``; see the module docstring.

    Inputs after ``x, weight, bias, n``: ``n`` lefts, ``n`` cores (or ``None``), ``n`` rights.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, n, *flat):
        lefts, cores, rights = flat[:n], flat[n : 2 * n], flat[2 * n :]
        right = torch.cat(rights, 0) if n > 1 else rights[0]
        left = torch.cat(lefts, 1) if n > 1 else lefts[0]
        h = x @ right.T  # N x B
        hs = h.split([r.shape[0] for r in rights], dim=1)
        gs = [_apply_core(hi, c) for hi, c in zip(hs, cores, strict=True)]
        g = torch.cat(gs, 1) if n > 1 else gs[0]
        y = torch.addmm(bias, x, weight.T) if bias is not None else x @ weight.T
        y.addmm_(g, left.T)
        ctx.n = n
        ctx.a_sizes = [lf.shape[1] for lf in lefts]
        ctx.b_sizes = [r.shape[0] for r in rights]
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, left, right, h, g, *cores)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, left, right, h, g, *cores = ctx.saved_tensors
        n = ctx.n
        need = ctx.needs_input_grad
        need_left = need[4 : 4 + n]
        need_core = need[4 + n : 4 + 2 * n]
        need_right = need[4 + 2 * n : 4 + 3 * n]
        gg = gy @ left  # N x A
        ggs = gg.split(ctx.a_sizes, dim=1)
        hs = h.split(ctx.b_sizes, dim=1)
        gs = g.split(ctx.a_sizes, dim=1)
        grad_cores: list[torch.Tensor | None] = []
        ghs = []
        for i in range(n):
            c, ggi, hi = cores[i], ggs[i], hs[i]
            if c is None:
                ghs.append(ggi)
                grad_cores.append(None)
            elif c.dim() == 1:
                ghs.append(ggi * c)
                grad_cores.append((ggi * hi).sum(0) if need_core[i] else None)
            else:
                ghs.append(ggi @ c)
                grad_cores.append(ggi.T @ hi if need_core[i] else None)
        gh = torch.cat(ghs, 1) if n > 1 else ghs[0]
        grad_x = None
        if need[0]:
            grad_x = gy @ weight
            grad_x.addmm_(gh, right)
        grad_w = gy.T @ x if need[1] else None
        grad_b = gy.sum(0) if ctx.has_bias and need[2] else None
        grad_lefts: list[torch.Tensor | None] = [None] * n
        if any(need_left):  # one GEMM for every trainable left factor
            idx = [i for i in range(n) if need_left[i]]
            gt = torch.cat([gs[i] for i in idx], 1) if len(idx) > 1 else gs[idx[0]]
            # (gtᵀ gy)ᵀ, not gyᵀ gt: the same products, but a tall-skinny output written column by column is
            # ~10x slower on the CPU's BLAS than the short-wide one (measured: 3072 x 4 from 512 tokens)
            parts = (gt.T @ gy).split([ctx.a_sizes[i] for i in idx], dim=0)
            for i, p in zip(idx, parts, strict=True):
                grad_lefts[i] = p.T
        grad_rights: list[torch.Tensor | None] = [None] * n
        if any(need_right):
            idx = [i for i in range(n) if need_right[i]]
            ht = torch.cat([ghs[i] for i in idx], 1) if len(idx) > 1 else ghs[idx[0]]
            parts = (ht.T @ x).split([ctx.b_sizes[i] for i in idx], dim=0)
            for i, p in zip(idx, parts, strict=True):
                grad_rights[i] = p
        return (grad_x, grad_w, grad_b, None, *grad_lefts, *grad_cores, *grad_rights)


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, terms: list[Term]
) -> torch.Tensor:
    """``F.linear(x, weight, bias) + Σ x ΔW_iᵀ`` for ``x`` of shape ``... x in`` (result ``... x out``).

    All tensors must share ``x``'s dtype and device (the caller casts the fp32 factors).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not terms:
        return torch.nn.functional.linear(x, weight, bias)
    flat = [t.left for t in terms] + [t.core for t in terms] + [t.right for t in terms]
    y = _FusedLowRank.apply(x2, weight, bias, len(terms), *flat)
    return y.reshape(*lead, weight.shape[0])
