"""Adapter files: safetensors with only the trainable tensors, and metadata saying what they belong to.

Metadata (all strings, as safetensors requires): ``format`` (``salt_seg.adapter``), ``format_version``,
``salt_seg_version``, ``base_variant``, ``base_hash`` (the canonical state-dict hash of the base checkpoint,
:func:`salt_seg.model.checkpoint.state_dict_hash`, so ``.pth``/safetensors/``module.``-prefixed copies of the same
weights match), ``adapter_config`` (JSON), ``preprocessing`` (JSON record), ``class_names`` (JSON), ``extra``
(JSON). Loading refuses a base-hash mismatch unless told otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from salt_seg import __version__
from salt_seg.adapters.config import AdapterConfig
from salt_seg.adapters.inject import adapter_layers, base_state_dict, get_record, inject_adapters
from salt_seg.configio import from_dict
from salt_seg.io import atomic_write_bytes
from salt_seg.model.checkpoint import state_dict_hash

logger = logging.getLogger(__name__)

FORMAT = "salt_seg.adapter"
FORMAT_VERSION = 1
#: model keys that are not part of the base checkpoint (learned per-dataset prompt tokens)
NON_BASE_PREFIXES = ("class_tokens.",)


def _state_dict_hash(state_dict: dict[str, torch.Tensor]) -> str:
    return state_dict_hash(state_dict)


def model_base_hash(model: nn.Module) -> str:
    """Canonical hash of the model's base weights (adapter tensors and class tokens excluded, wrapped keys
    mapped back to the base's). Equals the hash of the checkpoint the model was loaded from, as long as nothing
    declared trainable has been trained yet."""
    sd = {k: v for k, v in base_state_dict(model).items() if not k.startswith(NON_BASE_PREFIXES)}
    return _state_dict_hash(sd)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors recorded at injection, detached on the CPU, by model key.

    Raises:
        RuntimeError: the model has no adapter injected.
    """
    record = get_record(model)
    if record is None:
        raise RuntimeError("the model has no adapter; call inject_adapters first")
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu").contiguous() for n in record.trainable}


def encode_adapter(
    model: nn.Module,
    config: AdapterConfig | None = None,
    *,
    base_variant: str,
    base_hash: str,
    preprocessing: Any = None,
    class_names: list[str] | dict[int, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The bytes of an adapter file: the model's trainable tensors and metadata, safetensors-encoded.

    Callers that write the bytes themselves (the training checkpoints) get the same file as :func:`save_adapter`.

    Args:
        model: a model after :func:`~salt_seg.adapters.inject.inject_adapters`.
        config: the adapter config (must equal the injected one; defaults to it).
        base_variant: SAM variant name of the base model.
        base_hash: canonical hash of the base checkpoint's state dict.
        preprocessing: a :class:`~salt_seg.preprocessing.Preprocessing` record (or its dict), stored as JSON.
        class_names: label names (list, or ``{id: name}``).
        extra: any other JSON-serialisable metadata (step, dataset hash, ...).

    Raises:
        ValueError: ``config`` differs from the injected one, or metadata is not JSON-serialisable.
        RuntimeError: no adapter injected.
    """

    record = get_record(model)
    if record is None:
        raise RuntimeError("the model has no adapter; call inject_adapters first")
    if config is not None and config.to_dict() != record.config.to_dict():
        raise ValueError("save_adapter: config differs from the one injected into the model")
    if preprocessing is not None and hasattr(preprocessing, "to_json"):
        pre_json = preprocessing.to_json()
    else:
        pre_json = json.dumps(preprocessing, sort_keys=True) if preprocessing is not None else ""
    names: Any = class_names
    if isinstance(class_names, dict):
        names = {str(k): str(v) for k, v in class_names.items()}
    try:
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "salt_seg_version": str(__version__),
            "base_variant": str(base_variant),
            "base_hash": str(base_hash),
            "adapter_config": record.config.to_json(),
            "preprocessing": pre_json,
            "class_names": json.dumps(names) if names is not None else "",
            "extra": json.dumps(extra or {}, sort_keys=True),
        }
    except TypeError as exc:
        raise ValueError(f"save_adapter: metadata is not JSON-serialisable ({exc})") from None
    return save(adapter_state_dict(model), metadata=metadata)


def save_adapter(
    path: str | Path,
    model: nn.Module,
    config: AdapterConfig | None = None,
    *,
    base_variant: str,
    base_hash: str,
    preprocessing: Any = None,
    class_names: list[str] | dict[int, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model's trainable tensors and metadata to a safetensors file (atomically).

    Args:
        path: output file (``.safetensors``).
        model, config, base_variant, base_hash, preprocessing, class_names, extra: as :func:`encode_adapter`.

    Returns:
        The path written.

    Raises:
        ValueError: ``config`` differs from the injected one, or metadata is not JSON-serialisable.
        RuntimeError: no adapter injected.
    """
    data = encode_adapter(
        model,
        config,
        base_variant=base_variant,
        base_hash=base_hash,
        preprocessing=preprocessing,
        class_names=class_names,
        extra=extra,
    )
    return atomic_write_bytes(path, data)


def read_adapter_metadata(path: str | Path) -> dict[str, Any]:
    """Read an adapter file's metadata without loading its tensors.

    Returns:
        ``{"format_version": int, "salt_seg_version": str, "base_variant": str, "base_hash": str,
        "config": dict, "preprocessing": dict | None, "class_names": list | dict | None, "extra": dict,
        "tensors": {name: shape}, "num_parameters": int}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a salt_seg adapter file, or written by a newer format version.
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a salt_seg adapter file (metadata 'format' is {meta.get('format')!r})")
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: adapter format {version} is newer than this salt_seg reads ({FORMAT_VERSION})"
        )

    def _json(key: str) -> Any:
        text = meta.get(key, "")
        return json.loads(text) if text else None

    n = 0
    for shape in shapes.values():
        n += int(torch.Size(shape).numel())
    return {
        "format_version": version,
        "salt_seg_version": meta.get("salt_seg_version", ""),
        "base_variant": meta.get("base_variant", ""),
        "base_hash": meta.get("base_hash", ""),
        "config": _json("adapter_config"),
        "preprocessing": _json("preprocessing"),
        "class_names": _json("class_names"),
        "extra": _json("extra") or {},
        "tensors": shapes,
        "num_parameters": n,
    }


def load_adapter(
    path: str | Path,
    model: nn.Module,
    *,
    expected_base_hash: str | None = None,
    allow_base_mismatch: bool = False,
    svd_cache: str | bool | None = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Load an adapter file into a model, injecting the adapter first if the model has none.

    A model without adapters also gets the file's number of learned class prompt tokens.

    Args:
        path: the adapter file.
        model: the base model (fresh, or already injected with the same config, e.g. to resume).
        expected_base_hash: the base checkpoint's canonical hash if the caller knows it; otherwise it is computed
            from the model's base weights (about a second for ``vit_b``).
        allow_base_mismatch: load even when the hashes differ (logs a warning). The adapter was fitted to other
            weights, so results will differ from the ones it was validated with.
        svd_cache: SVD cache for the injection (see :func:`~salt_seg.adapters.inject.inject_adapters`).
        progress: progress bar while decomposing.

    Returns:
        The metadata, as :func:`read_adapter_metadata`.

    Raises:
        ValueError: another base variant or base weights, a different injected config, or tensors that do not
            fit the model (names or shapes).
        RuntimeError: the model's adapters are merged.
    """

    meta = read_adapter_metadata(path)
    config = from_dict(AdapterConfig, meta["config"])
    variant = getattr(model, "variant", "") or ""
    if variant and meta["base_variant"] and variant != meta["base_variant"]:
        raise ValueError(
            f"{path}: adapter is for SAM variant {meta['base_variant']!r}, the model is {variant!r}"
        )
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise RuntimeError("unmerge the model's adapters before loading another adapter file")
    actual = expected_base_hash or model_base_hash(model)
    stored = meta["base_hash"]
    if stored != actual:
        msg = (
            f"{path}: the adapter was trained on base weights {stored[:12] or '?'}…, but the base model here is "
            f"{actual[:12]}… (canonical state-dict hash); load the checkpoint it was trained on (a model loaded at "
            "another image size than its checkpoint's has interpolated position embeddings: pass the checkpoint's "
            "content hash as expected_base_hash)"
        )
        if not allow_base_mismatch:
            raise ValueError(
                msg + ", or pass allow_base_mismatch=True (--allow-base-mismatch) to load anyway"
            )
        logger.warning("%s; loading anyway (allow_base_mismatch)", msg)
    record = get_record(model)
    tokens = meta["tensors"].get("class_tokens.weight")
    current = getattr(model, "num_classes", None)
    if tokens is not None and current is not None and current != tokens[0]:
        if record is not None or not hasattr(model, "set_num_classes"):
            raise ValueError(
                f"{path}: the adapter has learned prompt tokens for {tokens[0]} classes, the model {current}; "
                f"build the model with num_classes={tokens[0]}"
            )
        logger.info("creating %d learned class prompt tokens to receive the adapter's", tokens[0])
        cast(Any, model).set_num_classes(int(tokens[0]))  # a SamModel (checked above)
    if record is None:
        inject_adapters(model, config, base_hash=actual, svd_cache=svd_cache, progress=progress)
        record = get_record(model)
        assert record is not None
    elif record.config.to_dict() != config.to_dict():
        raise ValueError(f"{path}: the model already has a different adapter config injected")
    tensors = load_file(str(path))
    expected = set(record.trainable)
    unexpected = sorted(set(tensors) - expected)
    missing = sorted(expected - set(tensors))
    if unexpected or missing:
        raise ValueError(
            f"{path}: tensors do not fit the model (unexpected: {unexpected[:5]}, missing: {missing[:5]}); "
            "was it saved from another model size or image size?"
        )
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        if params[name].shape != value.shape:
            raise ValueError(
                f"{path}: tensor {name} has shape {tuple(value.shape)}, the model expects {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))
    return meta
