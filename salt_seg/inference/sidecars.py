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


def label_json(class_names: dict[int, str], **extra: Any) -> dict[str, Any]:
    """The JSON sidecar's content: label names (``"0"`` = background) and colours, plus ``extra`` fields."""
    items = _sorted(class_names)
    return {
        "labels": {"0": "background", **{str(k): v for k, v in items}},
        "colors": {str(k): list(label_color(k)) for k, _ in items},
        **extra,
    }


def write_label_json(
    path: str | Path, class_names: dict[int, str], *, overwrite: bool = False, **extra: Any
) -> Path:
    """Write the JSON sidecar (atomically)."""
    text = json.dumps(label_json(class_names, **extra), indent=2) + "\n"
    return atomic_write_text(check_writable(path, overwrite), text)


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
