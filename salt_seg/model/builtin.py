"""The built-in base models: ``tiny`` SAM-architecture models pretrained by ``salt-seg pretrain`` on synthetic
objects (box and point prompts), shipped inside the package because Meta's weights cannot be fetched here.

Three ship, selected by name wherever a checkpoint is accepted (``--checkpoint builtin``,
``model.checkpoint: builtin_v1``):

* ``builtin`` - base v2: 256 px input with the full-resolution mask branch, pretrained on synthetic anatomy
  (:mod:`salt_seg.training.anatomy_stream`) from ``builtin_v1``; the default (predict, the viewer, the demo,
  ``configs/builtin_*.yaml``);
* ``builtin_v1`` - the first 256 px base (synthetic shapes only, SAM's quarter-resolution output); kept loadable
  by name for one release, and adapters trained on it still find it by its hash;
* ``builtin128`` - 128 px input, the stage ``builtin_v1`` was fine-tuned from.

See ``salt_seg/assets/BUILTIN_MODEL_CARD.md`` for how they were trained and what they score.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from salt_seg.model.checkpoint import read_checkpoint
from salt_seg.preprocessing import Preprocessing


@dataclass(frozen=True)
class BuiltinBase:
    """One shipped base: the name that selects it, its file in ``salt_seg/assets``, variant and input size."""

    name: str
    file: str
    variant: str
    image_size: int


BUILTINS: dict[str, BuiltinBase] = {
    "builtin": BuiltinBase("builtin", "builtin_tiny256_v2.safetensors", "tiny", 256),
    "builtin_v1": BuiltinBase("builtin_v1", "builtin_tiny256.safetensors", "tiny", 256),
    "builtin128": BuiltinBase("builtin128", "builtin_tiny128.safetensors", "tiny", 128),
}


def is_builtin(name: object) -> bool:
    """Whether ``name`` selects a shipped base (``builtin``, ``builtin128``)."""
    return isinstance(name, str) and name in BUILTINS


def builtin_checkpoint(name: str = "builtin") -> Path:
    """Path of a shipped base checkpoint.

    Raises:
        KeyError: not a built-in name.
        FileNotFoundError: the package was installed without its assets.
    """
    if name not in BUILTINS:
        raise KeyError(f"{name!r} is not a built-in base; choose one of {sorted(BUILTINS)}")
    path = Path(str(resources.files("salt_seg") / "assets" / BUILTINS[name].file))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the built-in base model is missing from this installation; reinstall salt_seg or run "
            "'salt-seg pretrain' to make one"
        )
    return path


def resolve_checkpoint(name: str | None) -> str | None:
    """A built-in name -> the shipped file; anything else is returned unchanged."""
    return str(builtin_checkpoint(name)) if name is not None and is_builtin(name) else name


@functools.cache
def _content_hash(name: str) -> str:

    return read_checkpoint(builtin_checkpoint(name))[1].content_hash


def builtin_with_hash(content_hash: str, first: str | None = None) -> str | None:
    """The built-in name whose weights have this canonical content hash (an adapter's ``base_hash``), if any.

    ``first`` is checked before the others (the name the adapter records), so the usual case hashes one file.
    """
    for name in sorted(BUILTINS, key=lambda n: n != first):
        try:
            if _content_hash(name) == content_hash:
                return name
        except FileNotFoundError:
            continue
    return None


def pretrain_record(image_size: int = 256) -> Preprocessing:
    """The preprocessing record the built-in bases were pretrained with (intensities already in [0, 1], one
    ``object`` class, box and point prompts): what a base used for prompts alone runs with."""
    return Preprocessing(intensity="none", image_size=image_size, classes={1: "object"}, prompt_mode="mixed")
