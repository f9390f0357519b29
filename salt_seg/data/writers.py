"""Write datasets in nnU-Net v2 layout (what ``data prepare`` produces and :func:`load_dataset` reads)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.volume import Volume, same_geometry
from salt_seg.io import atomic_write_text, save_nifti

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
        # units=False: dataset files keep the header they always had (their bytes feed the dataset content hash)
        for c in range(image.n_channels):
            path = out / "imagesTr" / f"{case_id}_{c:04d}.nii.gz"
            save_nifti(path, image.array[c], image.affine, dtype=np.float32, units=False)
        lab = label.array[0] if label.n_channels == 1 else np.moveaxis(label.array, 0, -1)
        save_nifti(out / "labelsTr" / f"{case_id}.nii.gz", lab, label.affine, dtype=label_dtype, units=False)
        n += 1
    doc: dict[str, Any] = {
        "name": name,
        "channel_names": {str(i): nm for i, nm in enumerate(channel_names)},
        "labels": {"background": 0, **{nm: int(cid) for cid, nm in sorted(classes.items())}},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    doc.update(extra or {})
    atomic_write_text(out / "dataset.json", json.dumps(doc, indent=2) + "\n")
    return out
