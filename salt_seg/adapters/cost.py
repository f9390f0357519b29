"""Cost model that picks, per layer and per forward, the cheapest exact way to apply an adapter.

Every adapter here writes its update as a sum of terms ``ΔW = Σ L·C·R`` (``L``: ``out x a``, ``C``: none, an
``a``-vector or an ``a x b`` matrix, ``R``: ``b x in``). Ways to apply it to ``N`` tokens (all exact):

- **factored** ``y = x Wᵀ + ((x Rᵀ) Cᵀ) Lᵀ``: the base GEMM plus about ``N·(a·out + b·in)`` per term, the same
  again for the input gradient, plus weight gradients for trainable ``L``/``R`` only;
- **dense** delta ``y = x (W + ΔW)ᵀ``: ``ΔW`` is built once per forward (``out·a·in`` per term, again per trainable
  operand in backward), and the weight gradient ``N·out·in`` is paid once for the layer;
- **svd_basis** (SALT/S-SAM, which hold the whole basis): ``y = ((x V) Σ') Uᵀ`` replaces the base GEMM by two
  ``N·k·(in + out)`` products and needs no weight gradient at all.

The factored form wins while ``a + b`` is small; when the adapted rank is near ``k`` (SALT's released attention
rank is 760 of 768) the dense delta wins once ``N`` exceeds about ``in·out/(in+out)`` tokens for inference, and for
training the SVD basis is cheaper still on non-square layers. Small-rank products run far below peak, so every
product is also charged for the memory it reads and writes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: multiply-adds charged per element read or written by a product (memory traffic)
MEMORY_WEIGHT = 4.0


@dataclass(frozen=True)
class TermShape:
    """Static shape of one update term (see the module docstring).

    Attributes:
        a: columns of ``L``.
        b: rows of ``R``.
        core: ``"none"`` (``a == b``), ``"diag"`` or ``"matrix"``.
        left_trainable / right_trainable / core_trainable: which operands carry gradients.
        prep: multiply-adds per forward to build ``L``, ``C``, ``R`` from the parameters (token independent).
    """

    a: int
    b: int
    core: str = "none"
    left_trainable: bool = False
    right_trainable: bool = False
    core_trainable: bool = False
    prep: int = 0


def matmul_cost(m: int, k: int, n: int) -> float:
    """Cost of an ``m x k`` by ``k x n`` product: multiply-adds plus memory traffic."""
    return m * k * n + MEMORY_WEIGHT * (m * k + k * n + m * n)


def build_cost(t: TermShape, out: int, fan_in: int) -> float:
    """Cost of materialising one term as a dense ``out x fan_in`` matrix."""
    if t.core == "matrix":
        return min(
            matmul_cost(t.a, t.b, fan_in) + matmul_cost(out, t.a, fan_in),
            matmul_cost(out, t.a, t.b) + matmul_cost(out, t.b, fan_in),
        )
    return matmul_cost(out, t.a, fan_in)


def base_cost(n: int, out: int, fan_in: int, training: bool) -> float:
    """The frozen base GEMM, and its input gradient when training."""
    return matmul_cost(n, fan_in, out) * (2 if training else 1)


def factored_cost(terms: list[TermShape], n: int, out: int, fan_in: int, training: bool) -> float:
    """Total cost of the fused factored forward (and backward when ``training``), base GEMM included."""
    total = base_cost(n, out, fan_in, training)
    a = sum(t.a for t in terms)
    b = sum(t.b for t in terms)
    fwd = (
        matmul_cost(n, fan_in, b)
        + matmul_cost(n, a, out)
        + sum(n * t.a * t.b for t in terms if t.core == "matrix")
    )
    total += fwd + sum(t.prep for t in terms)
    if training:
        total += fwd + sum(t.prep for t in terms)  # input gradient through both stacks; the prep's backward
        a_train = sum(t.a for t in terms if t.left_trainable)
        b_train = sum(t.b for t in terms if t.right_trainable)
        total += matmul_cost(out, n, a_train) if a_train else 0.0
        total += matmul_cost(b_train, n, fan_in) if b_train else 0.0
    return total


def dense_cost(terms: list[TermShape], n: int, out: int, fan_in: int, training: bool) -> float:
    """Total cost of building ``ΔW`` and applying ``W + ΔW`` (and backward when ``training``)."""
    total = base_cost(n, out, fan_in, training) + MEMORY_WEIGHT * 3 * out * fan_in  # W + ΔW
    for t in terms:
        build = build_cost(t, out, fan_in)
        total += build + t.prep
        if training:
            grads = int(t.left_trainable) + int(t.right_trainable) + int(t.core_trainable)
            total += build * max(grads, 1) + t.prep
    if training:
        total += matmul_cost(out, n, fan_in)  # gradient of the effective weight
    return total


def svd_basis_cost(k: int, extra: float, n: int, out: int, fan_in: int, training: bool) -> float:
    """Total cost of ``y = ((x V) Σ') Uᵀ`` over the whole rank-``k`` basis, plus ``extra`` multiply-adds per
    forward for small in-basis terms; forward and backward (no weight gradient) when ``training``."""
    fwd = matmul_cost(n, fan_in, k) + matmul_cost(n, k, out) + MEMORY_WEIGHT * 2 * n * k + extra
    return fwd * (2 if training else 1)


def cheapest(costs: dict[str, float]) -> str:
    """The key with the lowest cost."""
    return min(costs, key=costs.__getitem__)
