"""Label names next to a label map: a JSON sidecar, a 3D Slicer colour table and an ITK-SNAP label file.

JSON sidecar (``<case>.json``)
    ``{"labels": {"0": "background", "1": "liver", ...}, "colors": {"1": [r, g, b], ...}, ...}`` plus whatever
    the caller adds (the case summary).
3D Slicer colour table (``.ctbl``; Slicer's "Color table file format (.txt, .ctbl)")
    header lines start with ``#``, the first is ``# Color table file <path>``; then one line per label:
    ``index name R G B A`` with integers 0-255 and spaces in the name replaced by ``_``. Label 0 is
    ``Background`` with opacity 0.
ITK-SNAP label description file (``Segmentation > Import Label Descriptions``)
    the ``# ITK-SnAP Label Description File`` comment block, then per label
    ``IDX R G B A VIS MSH "LABEL"`` with ``A`` (opacity) in 0..1, visibility and mesh visibility 0/1, and the
    description in double quotes; label 0 is ``"Clear Label"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salt_seg.inference.export import check_writable
from salt_seg.io import atomic_write_text

#: distinct, colour-blind-aware colours (Okabe-Ito first, then Tableau), cycled for class ids 1, 2, ...
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
)

ITKSNAP_HEADER = """################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    IDX:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def label_color(class_id: int) -> tuple[int, int, int]:
    """The colour of a class id (cycled palette); 0 (background) is black."""
    return (0, 0, 0) if class_id == 0 else PALETTE[(int(class_id) - 1) % len(PALETTE)]


def _sorted(class_names: dict[int, str]) -> list[tuple[int, str]]:
    items = sorted((int(k), str(v)) for k, v in class_names.items())
    if any(k < 1 for k, _ in items):
        raise ValueError("class ids must be >= 1 (0 is the background)")
    return items


def label_json(
    class_names: dict[int, str], *, colors: Mapping[int, Sequence[int]] | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON sidecar's content: label names (``"0"`` = background) and colours, plus ``extra`` fields.

    ``colors``: RGB per class id where it differs from the palette (:func:`label_color`).
    """
    items = _sorted(class_names)
    chosen = {int(k): [int(c) for c in v] for k, v in (colors or {}).items()}
    return {
        "labels": {"0": "background", **{str(k): v for k, v in items}},
        "colors": {str(k): chosen.get(k, list(label_color(k))) for k, _ in items},
        **extra,
    }


def write_label_json(
    path: str | Path,
    class_names: dict[int, str],
    *,
    overwrite: bool = False,
    colors: Mapping[int, Sequence[int]] | None = None,
    **extra: Any,
) -> Path:
    """Write the JSON sidecar (atomically)."""
    text = json.dumps(label_json(class_names, colors=colors, **extra), indent=2) + "\n"
    return atomic_write_text(check_writable(path, overwrite), text)


def read_label_json(path: str | Path) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    """Label names and colours from a JSON sidecar (:func:`write_label_json`); background (0) is left out.

    Returns:
        ``(names, colors)``: class id -> name, and class id -> RGB for the ids the file gives a colour.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, no ``labels`` object, an id that is not a non-negative integer, or a colour that is
            not three integers in 0..255 (the message names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name}: no such label sidecar")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: not a JSON label sidecar ({exc})") from None
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, dict):
        raise ValueError(f'{path.name}: no \'labels\' object (expected {{"1": "name", ...}})')
    names: dict[int, str] = {}
    for key, name in labels.items():
        if not str(key).isdigit():
            raise ValueError(f"{path.name}: label id {key!r} is not a non-negative integer")
        if int(key) > 0:
            names[int(key)] = str(name)
    colors: dict[int, tuple[int, int, int]] = {}
    raw = doc.get("colors") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: 'colors' must be an object of id -> [r, g, b]")
    for key, rgb in raw.items():
        ok = (
            isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)
        )
        if not str(key).isdigit() or not ok:
            raise ValueError(f"{path.name}: colour of label {key!r} must be [r, g, b] with integers 0-255")
        if int(key) > 0:
            colors[int(key)] = (rgb[0], rgb[1], rgb[2])
    return dict(sorted(names.items())), colors


def slicer_name(name: str) -> str:
    """A label name as Slicer's colour table stores it (whitespace -> ``_``)."""
    return re.sub(r"\s+", "_", name.strip()) or "unnamed"


def slicer_ctbl(class_names: dict[int, str], title: str = "salt_seg labels") -> str:
    """A 3D Slicer colour table (``.ctbl``) for the classes."""
    items = _sorted(class_names)
    lines = [f"# Color table file {title}", f"# {len(items) + 1} values", "0 Background 0 0 0 0"]
    for k, name in items:
        r, g, b = label_color(k)
        lines.append(f"{k} {slicer_name(name)} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def write_slicer_ctbl(path: str | Path, class_names: dict[int, str], *, overwrite: bool = False) -> Path:
    """Write a 3D Slicer colour table (atomically)."""
    return atomic_write_text(check_writable(path, overwrite), slicer_ctbl(class_names, Path(path).name))


def itksnap_labels(class_names: dict[int, str]) -> str:
    """An ITK-SNAP label description file for the classes."""
    lines = [f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8d} {0:2d} {0:2d}    "Clear Label"']
    for k, name in _sorted(class_names):
        r, g, b = label_color(k)
        desc = name.replace('"', "'")
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d} {1:8d} {1:2d} {1:2d}    "{desc}"')
    return ITKSNAP_HEADER + "\n".join(lines) + "\n"


def write_itksnap_labels(path: str | Path, class_names: dict[int, str], *, overwrite: bool = False) -> Path:
    """Write an ITK-SNAP label description file (atomically)."""
    return atomic_write_text(check_writable(path, overwrite), itksnap_labels(class_names))
