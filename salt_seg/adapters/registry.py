"""The adapter registry: one entry per method, holding its layer builder, parameter count and defaults.

``ADAPTERS[name]`` is an :class:`AdapterSpec`: the method's facts (:mod:`salt_seg.adapters.methods`) plus how to
build and count its wrapper. Configs hold the name only; an unknown name raises ``ValueError`` listing the valid
ones. ``full`` and ``none`` wrap nothing: they only decide which parts of SAM train.

The registry imports the layer modules and the config; neither imports the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.config import AdapterConfig
from salt_seg.adapters.effort import EffortLayer
from salt_seg.adapters.lora import LoraLayer
from salt_seg.adapters.methods import METHODS, PAPER_EXTRAS, AdapterMethod, get_adapter_method
from salt_seg.adapters.salt import SaltLayer
from salt_seg.adapters.ssam import SSamLayer
from salt_seg.adapters.svd import SVDFactors
from salt_seg.adapters.svfit import SVFitLayer

__all__ = ["ADAPTERS", "PAPER_EXTRAS", "AdapterSpec", "Builder", "Counter", "get_adapter_spec"]

#: builder(base_layer, factors or None, resolved rank or None, config, module name) -> wrapper
Builder = Callable[
    ["nn.Linear | nn.Conv2d", "SVDFactors | None", "int | None", AdapterConfig, str], AdapterLayer
]
#: count(out, fan_in, resolved rank or None, config, module name) -> trainable parameters of one wrapped layer
Counter = Callable[[int, int, "int | None", AdapterConfig, str], int]


@dataclass(frozen=True)
class AdapterSpec(AdapterMethod):
    """One registered adapter: an :class:`~salt_seg.adapters.methods.AdapterMethod` and its wrapper.

    Attributes:
        build: makes the wrapper for one target layer; ``None`` for ``full``/``none`` (nothing is wrapped).
        count: trainable parameters of one wrapped layer, from shapes and the resolved rank only.
    """

    build: Builder | None = None
    count: Counter | None = None


# -- builders and counters: the registry is the one place that knows which config fields each layer takes.
# ``needs_svd`` / ``uses_rank`` / ``uses_r_lora`` guarantee the factors, rank and r_lora they read are set.


def _factors(factors: SVDFactors | None, name: str) -> SVDFactors:
    assert factors is not None, f"{name}: an SVD adapter was built without the layer's factors"
    return factors


def _rank(rank: int | None, name: str) -> int:
    assert rank is not None, f"{name}: a ranked adapter was built without a resolved rank"
    return rank


def _r_lora(config: AdapterConfig) -> int:
    assert config.r_lora is not None, f"adapter {config.name!r}: r_lora was not resolved"
    return config.r_lora


def _qv(config: AdapterConfig, name: str) -> bool:
    return bool(config.lora_qv_only) and name.endswith("qkv")


def _build_salt(
    base: nn.Linear | nn.Conv2d,
    factors: SVDFactors | None,
    rank: int | None,
    config: AdapterConfig,
    name: str,
) -> AdapterLayer:
    return SaltLayer(
        base,
        _factors(factors, name),
        _rank(rank, name),
        _r_lora(config),
        config.init,
        config.relu,
        config.compute,
    )


def _count_salt(out: int, fan_in: int, rank: int | None, config: AdapterConfig, name: str) -> int:
    return SaltLayer.count(out, fan_in, _rank(rank, name), _r_lora(config))


def _build_ssam(
    base: nn.Linear | nn.Conv2d,
    factors: SVDFactors | None,
    rank: int | None,
    config: AdapterConfig,
    name: str,
) -> AdapterLayer:
    return SSamLayer(base, _factors(factors, name), config.compute)


def _count_ssam(out: int, fan_in: int, rank: int | None, config: AdapterConfig, name: str) -> int:
    return SSamLayer.count(out, fan_in)


def _build_svfit(
    base: nn.Linear | nn.Conv2d,
    factors: SVDFactors | None,
    rank: int | None,
    config: AdapterConfig,
    name: str,
) -> AdapterLayer:
    return SVFitLayer(base, _factors(factors, name), _rank(rank, name), config.compute)


def _count_svfit(out: int, fan_in: int, rank: int | None, config: AdapterConfig, name: str) -> int:
    return SVFitLayer.count(out, fan_in, _rank(rank, name))


def _build_lora(
    base: nn.Linear | nn.Conv2d,
    factors: SVDFactors | None,
    rank: int | None,
    config: AdapterConfig,
    name: str,
) -> AdapterLayer:
    return LoraLayer(base, _r_lora(config), config.lora_alpha, _qv(config, name), config.compute)


def _count_lora(out: int, fan_in: int, rank: int | None, config: AdapterConfig, name: str) -> int:
    return LoraLayer.count(out, fan_in, _r_lora(config), _qv(config, name))


def _build_effort(
    base: nn.Linear | nn.Conv2d,
    factors: SVDFactors | None,
    rank: int | None,
    config: AdapterConfig,
    name: str,
) -> AdapterLayer:
    return EffortLayer(base, _factors(factors, name), _rank(rank, name), config.compute)


def _count_effort(out: int, fan_in: int, rank: int | None, config: AdapterConfig, name: str) -> int:
    return EffortLayer.count(out, fan_in, _rank(rank, name))


#: name -> (builder, counter) for the methods that wrap layers
_WRAPPERS: dict[str, tuple[Builder, Counter]] = {
    "salt": (_build_salt, _count_salt),
    "ssam": (_build_ssam, _count_ssam),
    "svfit": (_build_svfit, _count_svfit),
    "lora": (_build_lora, _count_lora),
    "effort": (_build_effort, _count_effort),
}


def _register(method: AdapterMethod) -> AdapterSpec:
    build, count = _WRAPPERS.get(method.name, (None, None))
    assert (build is not None) == method.wraps_layers, (
        f"adapter {method.name!r}: builder and wraps_layers disagree"
    )
    return AdapterSpec(**asdict(method), build=build, count=count)


ADAPTERS: dict[str, AdapterSpec] = {name: _register(method) for name, method in METHODS.items()}


def get_adapter_spec(name: str) -> AdapterSpec:
    """Look an adapter up by name.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return ADAPTERS[get_adapter_method(name).name]
