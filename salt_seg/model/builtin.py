"""The built-in base model: a ``tiny`` SAM-architecture model at 128 px input pretrained by ``salt-seg pretrain`` on synthetic
objects (box and point prompts), shipped inside the package because Meta's weights cannot be fetched here.

See ``salt_seg/assets/BUILTIN_MODEL_CARD.md`` for how it was trained and what it scores.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUILTIN_NAME = "builtin_tiny128.safetensors"
BUILTIN_VARIANT = "tiny"
BUILTIN_IMAGE_SIZE = 128


def builtin_checkpoint() -> Path:
    """Path of the shipped base checkpoint.

    Raises:
        FileNotFoundError: the package was installed without its assets.
    """
    path = Path(str(resources.files("salt_seg") / "assets" / BUILTIN_NAME))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the built-in base model is missing from this installation; reinstall salt_seg or run "
            "'salt-seg pretrain' to make one"
        )
    return path


def resolve_checkpoint(name: str | None) -> str | None:
    """``builtin`` -> the shipped file; anything else is returned unchanged."""
    return str(builtin_checkpoint()) if name == "builtin" else name
