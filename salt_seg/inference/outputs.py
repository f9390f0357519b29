"""One case's output files, written from a :class:`~salt_seg.inference.segment.SegmentationResult`.

``salt-seg predict`` and the viewer write the same set::

    <name>.nii.gz                 label map in the source geometry (uint8 / uint16)
    <name>.json                   label names, colours, and the case summary (volumes in mL, slices, confidence)
    <name>_probabilities.nii.gz   optional: x, y, z, class probabilities (uint8, scl_slope 1/255)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.dicom_seg import write_dicom_seg
from salt_seg.data.pipeline import PreparedVolume
from salt_seg.data.readers import file_kind
from salt_seg.data.rtstruct import write_rtstruct
from salt_seg.inference.export import (
    check_writable,
    read_source_header,
    write_label_map,
    write_probability_map,
)
from salt_seg.inference.segment import SegmentationResult
from salt_seg.inference.sidecars import label_color, write_label_json
from salt_seg.inference.summary import case_summary

#: DICOM outputs besides NIfTI: ``--format`` value -> (files key, file suffix)
DICOM_FORMATS = {"dicom-seg": ("dicom_seg", ".seg.dcm"), "rtstruct": ("rtstruct", ".rtstruct.dcm")}


def case_outputs(
    out_dir: str | Path, name: str, probabilities: bool = False, fmt: str = "nifti"
) -> dict[str, Path]:
    """The paths :func:`export_case` writes: ``label_map``, ``sidecar`` and (optionally) ``probabilities`` and the
    DICOM output of ``fmt`` (:data:`DICOM_FORMATS`)."""
    out = Path(out_dir)
    files = {"label_map": out / f"{name}.nii.gz", "sidecar": out / f"{name}.json"}
    if probabilities:
        files["probabilities"] = out / f"{name}_probabilities.nii.gz"
    if fmt != "nifti":
        key, suffix = DICOM_FORMATS[fmt]
        files[key] = out / f"{name}{suffix}"
    return files


def algorithm_record(meta: dict[str, Any]) -> dict[str, str]:
    """What a DICOM-SEG records as the algorithm's parameters, from a loaded model's ``meta``
    (:class:`~salt_seg.inference.loading.LoadedModel`): the model, the adapter kind and the base hash."""
    config = meta.get("config")
    return {
        "model": str(meta.get("adapter_path") or meta.get("base_checkpoint") or ""),
        "adapter": str(config.get("name", "")) if isinstance(config, dict) else "",
        "base_hash": str(meta.get("base_hash") or ""),
    }


def check_dicom_seg_source(source_path: str | Path | None, fmt: str | None) -> None:
    """DICOM-SEG output needs the DICOM series the volume was read from (a folder or zip of its files)."""
    if source_path is None or fmt != "dicom":
        what = f"a {fmt} image" if fmt else "not a file"
        raise ValueError(
            f"{source_path}: DICOM-SEG and RTSTRUCT output need a DICOM series as input; this case is {what}"
        )


def export_case(
    out_dir: str | Path,
    name: str,
    result: SegmentationResult,
    prepared: PreparedVolume,
    *,
    source_path: str | Path | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    fmt: str = "nifti",
    algorithm: dict[str, str] | None = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Map a segmentation back to the source grid and write the case's files.

    Args:
        out_dir: output folder (created).
        name: file stem.
        result: the segmentation on ``prepared``'s grid.
        prepared: the prepared volume it came from (its ``source`` is the geometry written).
        source_path: the input file; a NIfTI's header (qform/sform and codes) is copied from it.
        probabilities: also write the probability map (``result.probabilities`` must be set).
        overwrite: replace existing files.
        extra: more fields for the summary in the JSON sidecar.
        fmt: ``nifti``, or also the label map as a DICOM Segmentation (``dicom-seg``,
            :func:`salt_seg.data.dicom_seg.write_dicom_seg`) or an RT Structure Set (``rtstruct``,
            :func:`salt_seg.data.rtstruct.write_rtstruct`) of the source series (a DICOM series folder or zip).
        algorithm: what the DICOM-SEG records as the algorithm's parameters (model, adapter, base hash).

    Returns:
        The written paths and the case summary (:func:`~salt_seg.inference.summary.case_summary` + ``extra``).

    Raises:
        FileExistsError: a file exists and ``overwrite`` is false (checked before anything is written).
        ValueError: ``probabilities`` without probabilities in ``result``; a DICOM ``fmt`` for an input that is not
            a DICOM series.
    """
    files = case_outputs(out_dir, name, probabilities, fmt)
    for f in files.values():
        check_writable(f, overwrite)
    if probabilities and result.probabilities is None:
        raise ValueError(
            "export_case: probabilities asked for, but the result holds none (segment with probabilities=True)"
        )
    if fmt != "nifti":
        kind = file_kind(source_path) if source_path is not None else None
        check_dicom_seg_source(source_path, "dicom" if kind in ("dicom", "dicom-folder", "zip") else kind)
    labels = prepared.to_source(result.label_map, order=0)
    header = read_source_header(source_path) if source_path is not None else None
    names = result.class_names
    if fmt != "nifti":  # first: the DICOM writer's checks of the series can fail; then nothing is written
        colors = {int(c): label_color(int(c)) for c in names}
        if fmt == "dicom-seg":
            write_dicom_seg(
                labels, Path(str(source_path)), names, files["dicom_seg"], algorithm=algorithm, colors=colors
            )
        else:
            write_rtstruct(labels, Path(str(source_path)), names, files["rtstruct"], colors=colors)
    write_label_map(files["label_map"], labels, prepared.source, names, header=header, overwrite=overwrite)
    if probabilities:
        probs = np.stack([prepared.to_source(p, order=1) for p in result.probabilities])  # type: ignore[union-attr]
        write_probability_map(
            files["probabilities"], probs, prepared.source, header=header, overwrite=overwrite
        )
    summary = case_summary(result, prepared, labels)
    summary["outputs"] = {k: str(v) for k, v in files.items()}
    summary.update(extra or {})
    write_label_json(files["sidecar"], names, overwrite=overwrite, case=name, summary=summary)
    return files, summary
