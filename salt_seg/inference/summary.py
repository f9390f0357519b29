"""What a clinician reads first: per structure, its volume (mL), voxel count, the slices it spans, and the slices
the model was unsure about.

Volumes are counted on the exported label map (source grid): voxels x voxel volume, the absolute determinant of
the affine's 3 x 3 part in mm^3, / 1000 for mL. Slice numbers are the **source file's** slice indices along
the axis the model sliced (``slice_axis``), i.e. what a viewer shows for that file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from salt_seg.data.pipeline import PreparedVolume
from salt_seg.data.volume import Geometry
from salt_seg.inference.coords import prepared_slice_to_source, source_axis
from salt_seg.inference.segment import SegmentationResult


def voxel_volume_mm3(geometry: Geometry) -> float:
    """Volume of one voxel in mm^3."""
    return float(abs(np.linalg.det(np.asarray(geometry.affine)[:3, :3])))


def structure_stats(
    labels: np.ndarray, geometry: Geometry, class_names: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """Per class: ``name``, ``voxels`` and ``volume_ml`` of an ``I x J x K`` label map on ``geometry``."""
    counts = np.bincount(
        np.asarray(labels).ravel().astype(np.int64), minlength=max(class_names, default=0) + 1
    )
    mm3 = voxel_volume_mm3(geometry)
    return {
        str(cid): {
            "name": name,
            "voxels": int(counts[cid]),
            "volume_ml": round(float(counts[cid]) * mm3 / 1000.0, 4),
        }
        for cid, name in sorted(class_names.items())
    }


def case_summary(
    result: SegmentationResult, prepared: PreparedVolume, labels_source: np.ndarray
) -> dict[str, Any]:
    """The summary of one segmented case.

    Args:
        result: the segmentation (prepared grid).
        prepared: the prepared volume it came from.
        labels_source: the label map on the source grid (what was exported).

    Returns:
        ``{"mode", "slice_axis", "n_slices", "voxel_volume_mm3", "structures": {id: {name, voxels, volume_ml,
        slices, mean_confidence}}, "confidence", "propagation": [...]}`` with slices in source numbering.
    """
    geometry = prepared.source
    stats = structure_stats(labels_source, geometry, result.class_names)
    to_src = {i: prepared_slice_to_source(prepared, i) for i in range(prepared.n_slices)}
    for cid, entry in stats.items():
        c = int(cid)
        kept = np.nonzero(result.kept[c])[0]
        entry["slices"] = sorted(to_src[int(i)] for i in kept)
        conf = result.confidences(c)[kept]
        entry["mean_confidence"] = round(float(conf.mean()), 4) if len(kept) else None
    prop = [
        {
            "class_id": r.prompt.class_id,
            "seed_slice": to_src[int(r.prompt.slice_index)],  # type: ignore[arg-type]
            "slices": sorted(to_src[i] for i in r.slices),
            "stopped": dict(r.stopped),
        }
        for r in result.propagation
    ]
    out: dict[str, Any] = {
        "mode": result.mode,
        "slice_axis": source_axis(prepared),
        "n_slices": prepared.n_slices,
        "voxel_volume_mm3": round(voxel_volume_mm3(geometry), 6),
        "structures": stats,
        "confidence": result.confidence,
    }
    if prop:
        out["propagation"] = prop
    return out
