"""Volume inference and export: segment a volume slice by slice and write masks in the source geometry.

Library API (what ``salt-seg predict``, the viewer and ``salt-seg evaluate --model`` call)::

    from salt_seg.data import load_volume, prepare_volume
    from salt_seg.inference import load_inference_model, segment_volume, prompts_to_prepared, write_label_map

    model, record, class_names, meta = load_inference_model("runs/liver")      # merged adapter weights
    volume = load_volume("case01.nii.gz")
    prepared = prepare_volume(volume, record)                                  # RAS grid, model-ready
    result = segment_volume(model, record, prepared, mode="auto")              # class tokens, every slice
    files, summary = export_case("out", "case01", result, prepared, source_path="case01.nii.gz")
    # = prepared.to_source(result.label_map) -> write_label_map(..., header=read_source_header(source)) + sidecar

Modules: :mod:`~salt_seg.inference.loading` (run dir / adapter -> model), :mod:`~salt_seg.inference.coords`
(source voxels <-> model slices), :mod:`~salt_seg.inference.backend` (batched, cached slice decoding),
:mod:`~salt_seg.inference.propagation`, :mod:`~salt_seg.inference.segment` (modes, overlap policy),
:mod:`~salt_seg.inference.summary`, :mod:`~salt_seg.inference.export` (NIfTI), :mod:`~salt_seg.inference.sidecars`
(JSON, Slicer ``.ctbl``, ITK-SNAP), :mod:`~salt_seg.inference.outputs` (one case's files),
:mod:`~salt_seg.inference.batch` (folders, failures, ``torchrun`` shards),
:mod:`~salt_seg.inference.calibration` (choosing propagation thresholds on validation volumes).
"""

from __future__ import annotations

from salt_seg.inference.backend import ModelBackend, PredictorBackend, SliceOutput, make_backend
from salt_seg.inference.batch import (
    BatchReport,
    InputCase,
    PredictOptions,
    find_cases,
    predict_case,
    predict_cases,
)
from salt_seg.inference.coords import (
    prepared_slice_to_source,
    prompt_to_prepared,
    prompt_to_source,
    prompts_to_prepared,
    source_axis,
)
from salt_seg.inference.export import (
    read_source_header,
    write_label_map,
    write_probability_map,
)
from salt_seg.inference.loading import (
    LoadedModel,
    load_base_for_prompts,
    load_inference_model,
    resolve_base_checkpoint,
)
from salt_seg.inference.outputs import case_outputs, export_case
from salt_seg.inference.propagation import (
    PropagationResult,
    PropagationSettings,
    box_from_mask,
    propagate,
    propagate_many,
)
from salt_seg.inference.segment import (
    MODES,
    InferenceSettings,
    LabelAccumulator,
    SegmentationResult,
    segment_volume,
)
from salt_seg.inference.sidecars import (
    itksnap_labels,
    label_json,
    slicer_ctbl,
    write_itksnap_labels,
    write_label_json,
    write_slicer_ctbl,
)
from salt_seg.inference.summary import case_summary, structure_stats

__all__ = [
    "MODES",
    "BatchReport",
    "InputCase",
    "InferenceSettings",
    "LabelAccumulator",
    "LoadedModel",
    "ModelBackend",
    "PredictOptions",
    "PredictorBackend",
    "PropagationResult",
    "PropagationSettings",
    "SegmentationResult",
    "SliceOutput",
    "box_from_mask",
    "case_outputs",
    "case_summary",
    "export_case",
    "find_cases",
    "itksnap_labels",
    "label_json",
    "load_base_for_prompts",
    "load_inference_model",
    "make_backend",
    "predict_case",
    "predict_cases",
    "prepared_slice_to_source",
    "prompt_to_prepared",
    "prompt_to_source",
    "prompts_to_prepared",
    "propagate",
    "propagate_many",
    "read_source_header",
    "resolve_base_checkpoint",
    "segment_volume",
    "slicer_ctbl",
    "source_axis",
    "structure_stats",
    "write_itksnap_labels",
    "write_label_json",
    "write_label_map",
    "write_probability_map",
    "write_slicer_ctbl",
]
