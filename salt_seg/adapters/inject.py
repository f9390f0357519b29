"""Put adapters into a model: find targets, wrap them, freeze structurally, and the model-level helpers.

Freezing is structural: every parameter is frozen first, then exactly the adapter tensors and the parts the config
declares (LayerNorms, position embedding, ...) are unfrozen, by module type and attribute, never by name
substring. The names of those trainable tensors are recorded on the model; they are what an adapter file holds.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.config import AdapterConfig
from salt_seg.adapters.registry import AdapterSpec, get_adapter_spec
from salt_seg.adapters.svd import decompose_layers, resolve_rank

logger = logging.getLogger(__name__)

#: attribute under which the injection record lives on the model
RECORD_ATTR = "_salt_seg_adapter"
ADAPTABLE = (nn.Linear, nn.Conv2d)


@dataclass
class InjectionRecord:
    """What :func:`inject_adapters` did to a model.

    Attributes:
        config: the adapter config.
        wrapped: names of the wrapped modules.
        ranks: resolved rank per wrapped module (``None`` where the adapter has no rank).
        trainable: names of every trainable tensor (adapter tensors and declared parts), in model order.
    """

    config: AdapterConfig
    wrapped: list[str] = field(default_factory=list)
    ranks: dict[str, int | None] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)


def get_record(model: nn.Module) -> InjectionRecord | None:
    """The model's :class:`InjectionRecord`, or ``None`` if no adapter was injected."""
    return getattr(model, RECORD_ATTR, None)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Every adapter wrapper in the model, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def match_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the ``nn.Linear``/``nn.Conv2d`` modules matching any pattern, in model order.

    Raises:
        ValueError: a pattern matches no adaptable module (the message says what it did match, if anything).
    """
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
        good = [n for n in hits if isinstance(modules[n], ADAPTABLE)]
        if not good:
            if hits:
                kinds = sorted({type(modules[n]).__name__ for n in hits})
                raise ValueError(
                    f"adapter target {pattern!r} matched {len(hits)} module(s) of type {kinds}, "
                    "but no nn.Linear or nn.Conv2d"
                )
            examples = [n for n, m in modules.items() if isinstance(m, ADAPTABLE)][:4]
            raise ValueError(
                f"adapter target {pattern!r} matched no module; Linear/Conv2d names look like {examples}"
            )
        chosen.update(good)
    return [n for n in modules if n in chosen]


def _check_rank(spec: AdapterSpec, r: int, k: int, name: str) -> None:
    lo, hi = spec.min_rank, k - spec.max_rank_offset
    if not lo <= r <= hi:
        raise ValueError(
            f"adapter {spec.name!r}: rank {r} for {name} must be in [{lo}, {hi}] (k = min(out, in) = {k})"
        )


def resolve_ranks(
    model: nn.Module, config: AdapterConfig, names: list[str], factors: dict | None = None
) -> dict:
    """Resolved integer rank per target (``None`` for adapters without a rank).

    Args:
        model: the model the names refer to.
        config: the adapter config.
        names: target module names.
        factors: SVD factors by name; needed only for energy ranks.

    Raises:
        ValueError: a rank outside the adapter's valid range for a layer (naming the layer).
    """
    spec = get_adapter_spec(config.name)
    modules = dict(model.named_modules())
    ranks: dict[str, int | None] = {}
    for name in names:
        rank_spec = config.rank_for(name)
        if not spec.uses_rank or rank_spec is None:
            if spec.uses_rank:
                raise ValueError(
                    f"adapter {config.name!r}: no rank given for {name} (set rank.default or its type)"
                )
            ranks[name] = None
            continue
        w = modules[name].weight
        k = min(w.shape[0], w[0].numel())
        S = factors[name].S if factors is not None and name in factors else None
        r = resolve_rank(rank_spec, S, k, name)
        _check_rank(spec, r, k, name)
        ranks[name] = r
    return ranks


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _norm_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in root.named_modules()
        if isinstance(m, nn.LayerNorm) or type(m).__name__ == "LayerNorm2d"
    ]


def declared_parameters(model: nn.Module, config: AdapterConfig) -> dict[str, dict[str, nn.Parameter]]:
    """The parameters the config declares trainable besides adapter tensors, grouped by part.

    Groups: ``image_encoder`` (``full``), ``layernorm``, ``pos_embed``, ``rel_pos``, ``mask_decoder``,
    ``prompt_encoder``, ``class_tokens``, ``hires``. A part the model lacks (e.g. class tokens when ``num_classes=0``) is
    empty. Parameters of wrapped base layers are never included.
    """
    spec = get_adapter_spec(config.name)
    has_encoder = isinstance(getattr(model, "image_encoder", None), nn.Module)
    encoder = cast(nn.Module, model.image_encoder) if has_encoder else model
    prefix = "image_encoder." if has_encoder else ""
    frozen = {id(p) for layer in adapter_layers(model).values() for p in layer.base_layer.parameters()}
    groups: dict[str, dict[str, nn.Parameter]] = {}

    seen: set[int] = set(frozen)

    def add(group: str, named: list[tuple[str, nn.Parameter]]) -> None:
        kept = {n: p for n, p in named if id(p) not in seen}  # each tensor in its first group only
        seen.update(id(p) for p in kept.values())
        if kept:
            groups.setdefault(group, {}).update(kept)

    if spec.trains_encoder:
        add("image_encoder", [(prefix + n, p) for n, p in encoder.named_parameters()])
    if config.train_norms:
        for name, m in _norm_modules(encoder):
            add("layernorm", [(f"{prefix}{name}.{n}", p) for n, p in m.named_parameters()])
    if config.train_pos_embed and isinstance(getattr(encoder, "pos_embed", None), nn.Parameter):
        add("pos_embed", [(prefix + "pos_embed", cast(nn.Parameter, encoder.pos_embed))])
    if config.train_rel_pos:
        add(
            "rel_pos",
            [
                (prefix + n, p)
                for n, p in encoder.named_parameters()
                if n.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w")
            ],
        )
    for flag, attr in (
        ("train_mask_decoder", "mask_decoder"),
        ("train_prompt_encoder", "prompt_encoder"),
        ("train_class_tokens", "class_tokens"),
        ("train_hires", "hires"),
    ):
        part = getattr(model, attr, None)
        if getattr(config, flag) and isinstance(part, nn.Module) and part is not model:
            add(attr, [(f"{attr}.{n}", p) for n, p in part.named_parameters()])
    return groups


@torch.no_grad()
def inject_adapters(
    model: nn.Module,
    config: AdapterConfig,
    *,
    base_hash: str | None = None,
    svd_cache: str | bool | None = True,
    progress: bool = True,
) -> list[str]:
    """Wrap the config's target layers with its adapter and freeze everything else that it does not declare.

    Args:
        model: a :class:`~salt_seg.model.sam.SamModel` (target patterns are module names relative to it; a bare
            image encoder works with matching patterns).
        config: the adapter config.
        base_hash: canonical hash of the base checkpoint (keys the SVD cache; without it the cache is keyed by
            each weight's bytes).
        svd_cache: a cache directory, ``True`` for the default (``$SALT_SEG_CACHE``), ``False`` for none.
        progress: show a progress bar while decomposing.

    Returns:
        Names of the wrapped modules (empty for ``full`` and ``none``).

    Raises:
        ValueError: a target pattern matches nothing, or a rank is out of range for a layer.
        RuntimeError: the model already has adapters.
    """
    if get_record(model) is not None or adapter_layers(model):
        raise RuntimeError("this model already has adapters; build a fresh base model to inject another")
    spec = get_adapter_spec(config.name)
    names = match_targets(model, config.all_targets) if spec.wraps_layers else []
    energy = spec.uses_rank and config.has_energy_rank(names)
    if not energy:  # fail on a bad rank before spending time on SVD
        ranks = resolve_ranks(model, config, names)
    modules = dict(model.named_modules())
    factors = None
    if spec.needs_svd and names:
        factors = decompose_layers(
            {n: modules[n].weight for n in names}, base_hash=base_hash, cache_dir=svd_cache, progress=progress
        )
    if energy:
        ranks = resolve_ranks(model, config, names, factors)

    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = modules[name]
        # names are nn.Linear/nn.Conv2d targets, and only adapters that wrap layers (a builder) have any
        assert spec.build is not None and isinstance(base, ADAPTABLE)
        with torch.enable_grad():
            wrapper = spec.build(base, factors[name] if factors else None, ranks[name], config, name)
        wrapper.to(base.weight.device)
        _replace(model, name, wrapper)
    for group in declared_parameters(model, config).values():
        for p in group.values():
            p.requires_grad_(True)
    record = InjectionRecord(
        config=config,
        wrapped=names,
        ranks=ranks,
        trainable=[n for n, p in model.named_parameters() if p.requires_grad],
    )
    object.__setattr__(model, RECORD_ATTR, record)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("adapter %s: wrapped %d layers, %d trainable parameters", config.name, len(names), n_train)
    return names


def trainable_parameters(model: nn.Module, named: bool = False) -> list:
    """The tensors to optimise: the adapter tensors and the declared parts, in model order.

    Args:
        model: a model after :func:`inject_adapters` (otherwise: every parameter with ``requires_grad``).
        named: return ``(name, parameter)`` pairs.
    """
    record = get_record(model)
    wanted = set(record.trainable) if record is not None else None
    pairs = [
        (n, p) for n, p in model.named_parameters() if (p.requires_grad if wanted is None else n in wanted)
    ]
    return pairs if named else [p for _, p in pairs]


def adapter_regularization(model: nn.Module) -> torch.Tensor:
    """Sum of every adapter layer's regulariser, **unweighted**: the training loop adds
    ``config.reg_weight * adapter_regularization(model)`` to its loss. A 0-dim tensor (0 without adapters)."""
    layers = list(adapter_layers(model).values())
    if not layers:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    total = layers[0].regularization()
    for layer in layers[1:]:
        total = total + layer.regularization().to(total.device)
    return total


def merge_adapters(model: nn.Module, safe_merge: bool = True, keep_copy: bool = False) -> None:
    """Fold every adapter into its base weight (zero-overhead inference); all-or-nothing.

    Raises:
        ValueError: ``safe_merge`` found a non-finite merged weight; layers merged so far are unmerged again.
    """
    done: list[AdapterLayer] = []
    try:
        for layer in adapter_layers(model).values():
            if not layer.merged:
                layer.merge(safe_merge=safe_merge, keep_copy=keep_copy)
                done.append(layer)
    except ValueError:
        for layer in done:
            layer.unmerge()
        raise


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for layer in adapter_layers(model).values():
        if layer.merged:
            layer.unmerge()


def remove_adapters(model: nn.Module) -> None:
    """Undo :func:`inject_adapters`: unmerge, put every wrapped base layer back and drop the record.

    Parts the adapter declared trainable (norms, decoder, class tokens) keep their current values: a caller that
    swaps adapters restores them from its own copy of the base weights.
    """
    unmerge_adapters(model)
    for name, layer in adapter_layers(model).items():
        _replace(model, name, layer.base_layer)
    if get_record(model) is not None:
        object.__delattr__(model, RECORD_ATTR)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict under its original (un-wrapped) keys, without adapter tensors.

    Raises:
        RuntimeError: an adapter is merged (the base weights are not the base's then).
    """
    layers = adapter_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise RuntimeError("unmerge the adapters first: merged weights are not the base model's")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner = next((n for n in layers if key.startswith(n + ".")), None)
        if owner is None:
            out[key] = value
        elif key.startswith(owner + ".base_layer."):
            out[owner + "." + key[len(owner) + len(".base_layer.") :]] = value
    return out
