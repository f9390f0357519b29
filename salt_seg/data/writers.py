"""Write datasets in nnU-Net v2 layout (what ``data prepare`` produces and :func:`load_dataset` reads)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.volume import Volume, same_geometry, save_volume

_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_nnunet_dataset(
    out: str | Path,
    cases: Iterable[tuple[str, Volume, Volume]],
    *,
    classes: Mapping[int, str],
    channel_names: list[str],
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``imagesTr/<case>_000C.nii.gz``, ``labelsTr/<case>.nii.gz`` and ``dataset.json`` into ``out``.

    Args:
        out: an existing, empty folder (``data prepare`` passes a temporary one and renames it when done).
        cases: ``(case_id, image, label)``; the image's channels become ``_0000``, ``_0001``...; labels are
            written as uint8 (or int16 above 255 classes) on the image's grid.
        classes: label id -> name (background 0 added).
        channel_names: one name per image channel.
        name: dataset name.
        extra: more ``dataset.json`` keys (description, licence, reference...).

    Raises:
        ValueError: a bad case id, channel count, or label geometry.
    """
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    n = 0
    label_dtype = np.uint8 if max(classes, default=0) <= 255 else np.int16
    for case_id, image, label in cases:
        if not _CASE_ID.match(case_id) or re.search(r"_\d{4}$", case_id):
            raise ValueError(
                f"case id {case_id!r} must be letters, digits, '_', '.', '-' and not end in _XXXX"
            )
        if image.n_channels != len(channel_names):
            raise ValueError(f"case {case_id}: {image.n_channels} channel(s), expected {len(channel_names)}")
        if not same_geometry(image, label):
            raise ValueError(f"case {case_id}: label and image grids differ")
        for c in range(image.n_channels):
            ch = image.with_array(image.array[c : c + 1].astype(np.float32), channel_names=[channel_names[c]])
            save_volume(out / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", ch)
        save_volume(out / "labelsTr" / f"{case_id}.nii.gz", label.with_array(label.array), dtype=label_dtype)
        n += 1
    doc: dict[str, Any] = {
        "name": name,
        "channel_names": {str(i): nm for i, nm in enumerate(channel_names)},
        "labels": {"background": 0, **{nm: int(cid) for cid, nm in sorted(classes.items())}},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    doc.update(extra or {})
    (out / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
    return out
