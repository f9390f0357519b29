"""Adapters for SAM's image encoder: SALT and its SVD-family peers, LoRA, full and frozen.

Usage::

    from salt_seg.adapters import AdapterConfig, inject_adapters, trainable_parameters, adapter_regularization

    config = AdapterConfig(name="salt", r_lora=4)          # released ranks as fractions of k
    inject_adapters(model, config)                          # wraps encoder linears, freezes the rest
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    loss = seg_loss + config.reg_weight * adapter_regularization(model)
    save_adapter("adapter.safetensors", model, config, base_variant="vit_b", base_hash=h)
    merge_adapters(model)                                   # zero-overhead inference
"""

from __future__ import annotations

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.config import DEFAULT_TARGETS, NECK_TARGETS, AdapterConfig
from salt_seg.adapters.effort import EffortLayer
from salt_seg.adapters.inject import (
    adapter_layers,
    adapter_regularization,
    base_state_dict,
    declared_parameters,
    get_record,
    inject_adapters,
    merge_adapters,
    remove_adapters,
    trainable_parameters,
    unmerge_adapters,
)
from salt_seg.adapters.io import (
    FORMAT_VERSION,
    adapter_state_dict,
    encode_adapter,
    load_adapter,
    model_base_hash,
    read_adapter_metadata,
    save_adapter,
)
from salt_seg.adapters.lora import LoraLayer
from salt_seg.adapters.params import ParameterReport, count_parameters, format_parameter_report
from salt_seg.adapters.registry import ADAPTERS, AdapterSpec, get_adapter_spec
from salt_seg.adapters.salt import SaltLayer
from salt_seg.adapters.ssam import SSamLayer
from salt_seg.adapters.svd import SVDFactors, compute_svd, decompose_layers, default_cache_dir, resolve_rank
from salt_seg.adapters.svfit import SVFitLayer
from salt_seg.adapters.terms import Term

__all__ = [
    "ADAPTERS",
    "DEFAULT_TARGETS",
    "FORMAT_VERSION",
    "NECK_TARGETS",
    "AdapterConfig",
    "AdapterLayer",
    "AdapterSpec",
    "EffortLayer",
    "LoraLayer",
    "ParameterReport",
    "SSamLayer",
    "SVDFactors",
    "SVFitLayer",
    "SaltLayer",
    "Term",
    "adapter_layers",
    "adapter_regularization",
    "adapter_state_dict",
    "base_state_dict",
    "compute_svd",
    "count_parameters",
    "declared_parameters",
    "decompose_layers",
    "default_cache_dir",
    "encode_adapter",
    "format_parameter_report",
    "get_adapter_spec",
    "get_record",
    "inject_adapters",
    "load_adapter",
    "merge_adapters",
    "remove_adapters",
    "model_base_hash",
    "read_adapter_metadata",
    "resolve_rank",
    "save_adapter",
    "trainable_parameters",
    "unmerge_adapters",
]
