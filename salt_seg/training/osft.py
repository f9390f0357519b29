"""Orthogonal subspace fine-tuning (OSFT) for continual training: the constraint of *Sculpting Subspaces*
(Nayak et al. 2025, "Constrained Full Fine-Tuning in LLMs for Continual Learning", arXiv:2504.07097).

Before a new task, every trained weight matrix ``W`` (``m x n``, a Linear's ``out x in``) is decomposed,
``W = U S Vᵀ``; its top ``k`` singular directions ``U_k``, ``V_k`` carry what the earlier tasks rely on and are
protected. Every step the gradient is projected onto the complement of the protected subspace on both sides::

    G <- (I - U_k U_kᵀ) G (I - V_k V_kᵀ)  =  G - U_k U_kᵀ G - G V_k V_kᵀ + U_k U_kᵀ G V_k V_kᵀ

which is the update the paper's parameterisation allows (its trainable ``U_low``/``V_low`` get gradients with
their components along ``U_high``/``V_high`` removed, so ``ΔW`` has its columns orthogonal to ``U_k`` and its rows
orthogonal to ``V_k``). Such an update leaves ``W x`` unchanged for every input ``x`` in ``span(V_k)`` and never
writes into ``span(U_k)``. AdamW rescales the projected gradient per element and decays the whole weight, which
would leak into the protected directions, so the optimizer's change of each protected weight is projected once
more after the step (:meth:`OSFT.project_updates`): the constraint then holds exactly, not only in the gradient.

Rank: the paper keeps a fraction ``r_l = min_retain + I_l (max_retain - min_retain)`` of each layer's singular
directions, with ``I_l`` a layer importance in ``[0, 1]`` from the similarity of the layer's input and output
activations (a block that changes its input little matters less). Here ``I_l`` is measured per image-encoder
block (``1 - cos(input, output)`` over tokens, min-max normalised across blocks) on the new task's training
images; weights outside the encoder blocks (neck, mask decoder, ...) count as most important (``I = 1``). The
singular value spectrum sets the rest: directions with ``σ <= rtol · σ_max`` (numerically null) are never
protected, so a layer whose spectrum is short keeps fewer. The basis is recomputed from the current weights before
each task, so after task ``t`` it covers what tasks ``1..t`` wrote.

Only 2-D weight matrices are constrained; biases, norms, convolutions and embeddings train freely, as in the
paper's full fine-tuning of everything else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

#: singular values at or below this fraction of the largest count as null directions (never protected)
NULL_RTOL = 1e-6


def retained_rank(
    singular_values: torch.Tensor,
    importance: float,
    min_retain: float,
    max_retain: float,
    rtol: float = NULL_RTOL,
) -> int:
    """How many leading singular directions of a weight to protect.

    ``ceil(r · min(m, n))`` with ``r = min_retain + importance · (max_retain - min_retain)``, capped at the
    numerical rank of the spectrum (values above ``rtol · σ_max``).

    Args:
        singular_values: the weight's singular values, descending.
        importance: the layer importance in ``[0, 1]``.
        min_retain / max_retain: retention fractions of the least / most important layer.
    """
    n = int(singular_values.numel())
    if n == 0:
        return 0
    ratio = min_retain + min(max(importance, 0.0), 1.0) * (max_retain - min_retain)
    k = math.ceil(ratio * n - 1e-9)
    top = float(singular_values[0])
    numerical = int((singular_values > rtol * top).sum()) if top > 0 else 0
    return max(0, min(k, numerical, n))


def project(grad: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(I - U Uᵀ) G (I - V Vᵀ)`` for orthonormal ``U`` (``m x k``) and ``V`` (``n x k``), ``G`` ``m x n``."""
    if u.shape[1] == 0:
        return grad
    g = grad - u @ (u.T @ grad)
    return g - (g @ v) @ v.T


@dataclass
class ProtectedWeight:
    """One constrained weight: the parameter and its protected singular bases."""

    name: str
    param: nn.Parameter
    u: torch.Tensor
    v: torch.Tensor
    importance: float
    before: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])


class OSFT:
    """The protected subspaces of a model's trained weight matrices, and the projections that keep them.

    Usage in a training step::

        loss.backward()
        osft.project_gradients()      # the paper's projection of G
        osft.snapshot()
        optimizer.step()
        osft.project_updates()        # AdamW's per-element scaling and weight decay kept out as well
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, nn.Parameter]],
        importance: Mapping[str, float] | None = None,
        *,
        min_retain: float = 0.1,
        max_retain: float = 0.8,
        min_dim: int = 2,
    ) -> None:
        """Decompose every 2-D parameter (both sides ``>= min_dim``) and fix its protected basis.

        Args:
            named_params: the trainable parameters (others are ignored).
            importance: layer importance per parameter name (default 1: the most protected).
        """
        if not 0 <= min_retain <= max_retain <= 1:
            raise ValueError(f"OSFT needs 0 <= min_retain <= max_retain <= 1, got {min_retain}, {max_retain}")
        importance = importance or {}
        self.weights: list[ProtectedWeight] = []
        for name, p in named_params:
            if p.ndim != 2 or min(p.shape) < min_dim:
                continue
            w = p.detach().to(torch.float64)
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            imp = float(importance.get(name, 1.0))
            k = retained_rank(s, imp, min_retain, max_retain)
            dtype = p.dtype
            self.weights.append(
                ProtectedWeight(
                    name,
                    p,
                    u[:, :k].to(dtype).contiguous(),
                    vh[:k].T.to(dtype).contiguous(),
                    imp,
                )
            )

    def to(self, device: torch.device | str) -> OSFT:
        for w in self.weights:
            w.u, w.v = w.u.to(device), w.v.to(device)
        return self

    @torch.no_grad()
    def project_gradients(self) -> None:
        """Project each protected weight's gradient onto the complement of its protected subspace (in place)."""
        for w in self.weights:
            if w.param.grad is not None and w.rank:
                w.param.grad.copy_(project(w.param.grad, w.u, w.v))

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the protected weights before the optimizer step."""
        for w in self.weights:
            w.before = w.param.detach().clone() if w.rank else None

    @torch.no_grad()
    def project_updates(self) -> None:
        """Replace each protected weight's change since :meth:`snapshot` by its projection."""
        for w in self.weights:
            if w.before is None:
                continue
            delta = w.param - w.before
            w.param.copy_(w.before + project(delta, w.u, w.v))
            w.before = None

    def summary(self) -> dict[str, object]:
        """Protected rank per weight and in total (logged in the run's provenance)."""
        total = sum(min(w.param.shape) for w in self.weights)
        kept = sum(w.rank for w in self.weights)
        return {
            "weights": len(self.weights),
            "protected_directions": kept,
            "of_directions": total,
            "ranks": {w.name: [w.rank, min(w.param.shape), round(w.importance, 4)] for w in self.weights},
        }


@torch.no_grad()
def block_importance(model: nn.Module, images: torch.Tensor) -> list[float]:
    """Layer importance of each image-encoder block, from the cosine similarity of its input and output tokens.

    ``1 - mean cos(x_in, x_out)`` per block over the images' tokens, min-max normalised to ``[0, 1]`` across
    blocks (all 1 when the blocks are alike). A model without ``image_encoder.blocks`` gives ``[]``.
    """
    blocks = getattr(getattr(model, "image_encoder", None), "blocks", None)
    if not blocks:
        return []
    sims: list[list[float]] = [[] for _ in blocks]
    handles = []
    for i, blk in enumerate(blocks):

        def hook(_mod, inputs, output, i=i):  # noqa: ANN001 - forward hook signature
            x, y = inputs[0], output
            cos = nn.functional.cosine_similarity(x.flatten(0, -2).float(), y.flatten(0, -2).float(), dim=-1)
            sims[i].append(float(cos.mean()))

        handles.append(blk.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model.encode_images(images)  # type: ignore[operator]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    raw = [1.0 - sum(s) / len(s) for s in sims]
    lo, hi = min(raw), max(raw)
    if hi - lo < 1e-12:
        return [1.0 for _ in raw]
    return [(r - lo) / (hi - lo) for r in raw]


def parameter_importance(names: Iterable[str], blocks: list[float]) -> dict[str, float]:
    """Each parameter's importance: its encoder block's (``image_encoder.blocks.N.``), 1 elsewhere."""
    out: dict[str, float] = {}
    prefix = "image_encoder.blocks."
    for name in names:
        value = 1.0
        if name.startswith(prefix):
            idx = name[len(prefix) :].split(".", 1)[0]
            if idx.isdigit() and int(idx) < len(blocks):
                value = blocks[int(idx)]
        out[name] = value
    return out
