"""Loading a trained model for inference: run directory or adapter file -> base + adapter, merged.

The base is found from the adapter's metadata (``extra.base_checkpoint``, written by training):

* ``builtin`` or ``builtin128``: a shipped base (:mod:`salt_seg.model.builtin`); when the adapter's ``base_hash``
  is another shipped base's, that one, so adapters trained on either keep loading;
* ``run:base.safetensors``: the randomly initialised base the run saved next to its adapter;
* a path: that file (relative paths are tried from the working directory, then the run dir).

``--checkpoint`` (and ``--variant``) override it. The adapter is checked against the base's content hash, then
merged into the weights (zero overhead at inference).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from salt_seg.adapters import load_adapter, merge_adapters, read_adapter_metadata
from salt_seg.configio import from_dict
from salt_seg.model.builtin import builtin_with_hash, is_builtin, pretrain_record, resolve_checkpoint
from salt_seg.model.checkpoint import load_base_model, read_checkpoint
from salt_seg.model.hires import HIRES_PREFIX
from salt_seg.model.sam import SamModel
from salt_seg.preprocessing import Preprocessing
from salt_seg.runs import find_adapter, is_run_dir

log = logging.getLogger(__name__)

RUN_BASE_PREFIX = "run:"


class LoadedModel(NamedTuple):
    """A model ready for inference (unpacks as ``model, record, class_names, meta``).

    Attributes:
        model: the base with the adapter loaded (merged unless asked otherwise), eval mode, on the device.
        record: the preprocessing record the adapter was trained with.
        class_names: class id -> name.
        meta: the adapter metadata (:func:`salt_seg.adapters.read_adapter_metadata`) plus ``adapter_path``,
            ``base_checkpoint`` (the file used, or ``None`` for random weights) and ``merged``.
    """

    model: SamModel
    record: Preprocessing
    class_names: dict[int, str]
    meta: dict[str, Any]


def run_dir_of(adapter: Path) -> Path | None:
    """The run directory an adapter file lives in (its folder or an ancestor holding ``config.yaml``)."""

    for folder in [adapter.parent, *adapter.parent.parents][:4]:
        if is_run_dir(folder):
            return folder
    return None


def resolve_base_checkpoint(adapter: Path, meta: dict[str, Any], checkpoint: str | None) -> str | None:
    """The base weights file for an adapter (see the module docstring); ``checkpoint`` wins when given.

    Raises:
        FileNotFoundError: the base the metadata names cannot be found (the message says how to give it).
    """

    if checkpoint is not None:
        return resolve_checkpoint(checkpoint)
    named = (meta.get("extra") or {}).get("base_checkpoint")
    if not named:
        raise FileNotFoundError(
            f"{adapter}: the adapter does not say which base it was trained on; pass --checkpoint (and --variant)"
        )
    named = str(named)
    if is_builtin(named):
        match = builtin_with_hash(str(meta.get("base_hash") or ""), first=named)
        return resolve_checkpoint(match or named)
    run = run_dir_of(adapter)
    if named.startswith(RUN_BASE_PREFIX):
        name = named[len(RUN_BASE_PREFIX) :]
        for folder in [f for f in (run, adapter.parent) if f is not None]:
            if (folder / name).is_file():
                return str(folder / name)
        raise FileNotFoundError(
            f"{adapter}: its base was saved as {name} in the run directory, which is not next to it; pass "
            "--checkpoint"
        )
    candidates = [Path(named)] + ([run / named] if run is not None and not Path(named).is_absolute() else [])
    for c in candidates:
        if c.is_file():
            return str(c)
    raise FileNotFoundError(
        f"{adapter}: base checkpoint {named} (from the adapter's metadata) not found; pass --checkpoint"
    )


def load_base_for_prompts(
    checkpoint: str | Path = "builtin",
    variant: str | None = None,
    device: torch.device | str = "cpu",
    *,
    intensity: str = "none",
) -> tuple[SamModel, Preprocessing]:
    """A base checkpoint alone (no adapter) for box/point prompts and propagation, with a matching record.

    The variant and input size are read from the checkpoint's tensors. The record is the built-in base's
    pretraining record (SAM scaling, longest-side resize, one class ``object``) with ``intensity``: ``none``
    (default: intensities already in ``[0, 1]``, exactly as the synthetic pretraining images; the propagation
    thresholds were calibrated this way) or e.g. ``minmax`` to scale any other volume to ``[0, 1]`` once
    (``salt-seg predict --checkpoint`` without ``--model`` does that).

    Raises:
        FileNotFoundError: no such checkpoint (or the built-in base is missing).
        ValueError: not a SAM checkpoint.
    """

    path = str(resolve_checkpoint(str(checkpoint)))
    _, info = read_checkpoint(path, compute_hash=False)
    size = int(info.image_size or 256)
    model, _ = load_base_model(variant or info.variant, path, image_size=size)
    record = replace(pretrain_record(size), intensity=intensity)
    return model.to(device).eval(), record


def _class_names(meta: dict[str, Any], record: Preprocessing) -> dict[int, str]:
    names = dict(record.classes)
    raw = meta.get("class_names")
    if isinstance(raw, dict):
        names.update({int(k): str(v) for k, v in raw.items()})
    elif isinstance(raw, list):
        names.update({i + 1: str(v) for i, v in enumerate(raw)})
    return dict(sorted(names.items()))


def load_inference_model(
    model_path: str | Path,
    variant: str | None = None,
    checkpoint: str | None = None,
    device: torch.device | str = "cpu",
    *,
    merge: bool = True,
    allow_base_mismatch: bool = False,
) -> LoadedModel:
    """Load a trained adapter and its base for inference.

    Args:
        model_path: a run directory or an adapter ``.safetensors`` file.
        variant: SAM variant; default: the adapter's ``base_variant``.
        checkpoint: base weights file (or ``builtin``); default: from the adapter's metadata.
        device: where to put the model.
        merge: fold the adapter into the base weights (faster; ``False`` keeps the wrappers, e.g. to benchmark).
        allow_base_mismatch: load even when the base's content hash differs from the one the adapter records.

    Returns:
        A :class:`LoadedModel` (``model, record, class_names, meta``).

    Raises:
        FileNotFoundError: no adapter or base found.
        ValueError: not an adapter file, no preprocessing record, or a base the adapter does not fit.
    """

    adapter = find_adapter(model_path)
    meta = read_adapter_metadata(adapter)
    if not meta.get("preprocessing"):
        raise ValueError(
            f"{adapter}: the adapter holds no preprocessing record; it cannot be used for inference"
        )
    record = from_dict(Preprocessing, meta["preprocessing"])
    base = resolve_base_checkpoint(adapter, meta, checkpoint)
    variant = variant or meta.get("base_variant") or None
    n_tokens = 0
    shape = meta.get("tensors", {}).get("class_tokens.weight")
    if shape:
        n_tokens = int(shape[0])
    # an adapter trained with the full-resolution branch carries its tensors (also when the base had none)
    hires = True if any(k.startswith(HIRES_PREFIX) for k in meta.get("tensors", {})) else None
    model, info = load_base_model(
        variant, base, image_size=record.image_size, num_classes=n_tokens, hires=hires
    )
    if n_tokens and model.num_classes != n_tokens:
        model.set_num_classes(n_tokens)
    expected = info.content_hash if info is not None else None
    load_adapter(
        adapter, model, expected_base_hash=expected, allow_base_mismatch=allow_base_mismatch, progress=False
    )
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if merge:
        merge_adapters(model)
    log.info("loaded %s on %s (base %s, variant %s, merged=%s)", adapter, device, base, model.variant, merge)
    full = {**meta, "adapter_path": str(adapter), "base_checkpoint": base, "merged": bool(merge)}
    return LoadedModel(model, record, _class_names(meta, record), full)
