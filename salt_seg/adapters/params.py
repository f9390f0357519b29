"""Parameter accounting: how many tensors an adapter config trains, per layer type and in total.

Counting needs only shapes (and, for energy ranks, singular values), so ``salt-seg params`` reports ``vit_b``
budgets without decomposing anything. Percentages are of the SAM model as built here (image encoder, prompt
encoder, mask decoder at the given image size). The SALT paper's percentages are of ≈241M parameters: SAM ViT-B
(93.7M) plus the whole CLIP ViT-B/32 model it uses for text prompts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from salt_seg.adapters.config import AdapterConfig
from salt_seg.adapters.inject import declared_parameters, match_targets, resolve_ranks
from salt_seg.adapters.registry import get_adapter_spec
from salt_seg.adapters.svd import decompose_layers

PAPER_NOTE = (
    "percentages are of the SAM model as built here; the SALT paper's are of SAM ViT-B + CLIP ViT-B/32 "
    "(about 241M), e.g. its SALT r_lora=4 budget 1.1M is 0.46% there"
)


@dataclass
class ParameterRow:
    """One line of the accounting.

    Attributes:
        group: layer pattern (``image_encoder.blocks.*.attn.qkv``) or declared part (``pos_embed``, ...).
        kind: ``adapter`` or ``declared``.
        layers: wrapped layers in the group (adapter rows) or tensors (declared rows).
        ranks: distinct resolved ranks in the group (empty where the adapter has none).
        params: trainable parameters.
        percent: of the base model.
    """

    group: str
    kind: str
    layers: int
    ranks: list[int]
    params: int
    percent: float


@dataclass
class ParameterReport:
    """The whole accounting for one model and adapter config."""

    adapter: str
    config: dict[str, Any]
    base_params: int
    rows: list[ParameterRow] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def percent(self) -> float:
        return 100.0 * self.total / max(self.base_params, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "config": self.config,
            "base_params": self.base_params,
            "rows": [asdict(r) for r in self.rows],
            "total": self.total,
            "percent": self.percent,
            "note": PAPER_NOTE,
        }


def _pattern(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)


def count_parameters(
    model: nn.Module, config: AdapterConfig, *, base_hash: str | None = None, progress: bool = True
) -> ParameterReport:
    """Count what ``config`` would train on ``model``, without changing the model.

    Args:
        model: a base model (not yet injected).
        config: the adapter config.
        base_hash: the base checkpoint's hash, to share the SVD cache (energy ranks only).
        progress: progress bar if energy ranks need an SVD.

    Returns:
        The accounting, one row per adapted layer pattern and per declared part.

    Raises:
        ValueError: as :func:`~salt_seg.adapters.inject.inject_adapters` for bad targets or ranks.
    """
    spec = get_adapter_spec(config.name)
    base_params = sum(p.numel() for p in model.parameters())
    report = ParameterReport(config.name, config.to_dict(), base_params)
    modules = dict(model.named_modules())
    names = match_targets(model, config.all_targets) if spec.wraps_layers else []
    factors = None
    if spec.uses_rank and config.has_energy_rank(names):
        # energy ranks depend on the spectrum: use the same (cached) fp32 SVD the injection will use
        factors = decompose_layers(
            {n: modules[n].weight for n in names}, base_hash=base_hash, progress=progress
        )
    ranks = resolve_ranks(model, config, names, factors)
    groups: dict[str, list[tuple[int, int | None]]] = {}
    for n in names:
        w = modules[n].weight
        assert spec.count is not None  # only adapters that wrap layers (and so have a counter) match names
        count = spec.count(int(w.shape[0]), int(w[0].numel()), ranks[n], config, n)
        groups.setdefault(_pattern(n), []).append((count, ranks[n]))
    for group, items in groups.items():
        params = sum(c for c, _ in items)
        rank_set = sorted({r for _, r in items if r is not None})
        report.rows.append(
            ParameterRow(group, "adapter", len(items), rank_set, params, 100.0 * params / base_params)
        )
    for group, tensors in declared_parameters(model, config).items():
        params = sum(p.numel() for p in tensors.values())
        report.rows.append(
            ParameterRow(group, "declared", len(tensors), [], params, 100.0 * params / base_params)
        )
    return report


def format_parameter_report(report: ParameterReport, title: str = "") -> str:
    """A plain-text table of the report (what ``salt-seg params`` prints)."""
    lines = [title] if title else []
    width = max([len(r.group) for r in report.rows] + [len("total")])
    lines.append(
        f"{'group':<{width}}  {'kind':<8}  {'count':>6}  {'rank':>9}  {'params':>12}  {'% of SAM':>8}"
    )
    for r in report.rows:
        rank = (
            "" if not r.ranks else (str(r.ranks[0]) if len(r.ranks) == 1 else f"{r.ranks[0]}-{r.ranks[-1]}")
        )
        lines.append(
            f"{r.group:<{width}}  {r.kind:<8}  {r.layers:>6}  {rank:>9}  {r.params:>12,}  {r.percent:>7.3f}%"
        )
    lines.append(
        f"{'total':<{width}}  {'':<8}  {'':>6}  {'':>9}  {report.total:>12,}  {report.percent:>7.3f}%"
    )
    lines.append(f"base model: {report.base_params:,} parameters; {PAPER_NOTE}")
    return "\n".join(lines)
