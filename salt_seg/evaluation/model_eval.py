"""Evaluate a trained run on its split's test part: predict each test case, then score it.

Prompts for prompted models are simulated from the ground truth on every test slice where a structure is present
(a tight box, or the interior point farthest from the boundary) - the standard protocol for box/point-prompted
SAM models; models with learned class tokens are evaluated prompt-free (``auto``), which needs no ground truth.
Multi-class overlap: ``label_map`` scores the exported label map (each voxel takes its most probable class, as
``salt-seg predict`` writes it); ``independent`` scores each class's own mask against that class alone (the SALT
paper's protocol: one text prompt, one binary mask per class). Scores are computed on the prepared grid (RAS-reoriented, resampled only if the record resamples), with its
spacing in mm.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from salt_seg.data import extract_slice, load_dataset, load_split
from salt_seg.data.pipeline import case_item, loading_transforms, prepared_from_item
from salt_seg.evaluation.runner import EvaluationResult, EvaluationSettings, evaluate_cases
from salt_seg.inference import load_inference_model, segment_volume
from salt_seg.model.precision import check_precision
from salt_seg.prompts import Prompt
from salt_seg.runs import find_adapter, run_dataset

log = logging.getLogger(__name__)

PROMPTS = ("auto", "box", "point")


def gt_prompts(label: np.ndarray, class_ids: list[int], slices: list[int], axis: int, kind: str) -> list:
    """Prompts from ground truth: one per (test slice, class present), in prepared-slice pixels."""

    out = []
    for s in slices:
        lab = extract_slice(label, axis, s)
        for cid in class_ids:
            m = lab == cid
            if not m.any():
                continue
            if kind == "box":
                ys, xs = np.nonzero(m)
                box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
                out.append(Prompt(box=box, class_id=cid, slice_index=s))
            else:
                dist = ndimage.distance_transform_edt(m)
                y, x = np.unravel_index(int(dist.argmax()), m.shape)
                out.append(Prompt(points=[(int(x), int(y))], point_labels=[1], class_id=cid, slice_index=s))
    return out


def continual_lut(meta: dict, data_path: str) -> np.ndarray | None:
    """A continued run's label -> model-id lookup table for ``data_path`` (the latest task on that dataset path,
    else the last task), ``None`` for other runs."""
    tasks = (meta.get("extra") or {}).get("continual", {}).get("tasks")
    if not tasks:
        return None
    task = next((t for t in reversed(tasks) if str(t.get("dataset")) == data_path), tasks[-1])
    cmap = {int(k): int(v) for k, v in task["class_map"].items()}
    lut = np.zeros(max(cmap) + 1, dtype=np.int64)
    for k, v in cmap.items():
        lut[k] = v
    return lut


def evaluate_run(
    model_path: str | Path,
    *,
    split_file: str | Path | None = None,
    data_path: str | Path | None = None,
    prompt: str | None = None,
    settings: EvaluationSettings | None = None,
    device: Any = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    inference: Any = None,
    overlap: str = "label_map",
    part: str = "test",
    precision: str = "fp32",
    loaded: Any = None,
) -> EvaluationResult:
    """Predict and score the test part of a run's split (or another part: ``train`` measures the fit).

    Args:
        model_path: a run directory (its ``split.json`` and ``config.yaml`` locate the data) or adapter file.
        split_file: a split to use instead of the run's own.
        data_path: the dataset folder, instead of the run config's ``data.path``.
        prompt: ``auto`` (class tokens), ``box`` or ``point`` (simulated from ground truth); default: ``auto``
            when the model has class tokens, else ``box``.
        settings: metric settings; the slice axis defaults to the record's.
        device: torch device.
        batch_size: slices per encoder call.
        progress: show progress bars.
        inference: :class:`salt_seg.inference.InferenceSettings` (default: the calibrated ones).
        overlap: ``label_map`` (score the exported multi-class map) or ``independent`` (each class's own mask).
        part: the split part to score: ``test`` (default), ``val`` or ``train`` (how well the model fits the
            slices it was trained on).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (:mod:`salt_seg.model.precision`).
        loaded: a :class:`~salt_seg.inference.LoadedModel` already in memory to score instead of loading
            ``model_path``'s adapter (``salt-seg library compress`` scores compressed weights this way); the run
            still gives the split and the data.

    Raises:
        FileNotFoundError / ValueError: no split, no dataset, or an unknown prompt kind.
    """

    adapter = find_adapter(model_path)
    run_dir = Path(model_path) if Path(model_path).is_dir() else adapter.parent
    split_path = Path(split_file) if split_file else run_dir / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path}: no split to evaluate (pass --split)")
    split = load_split(split_path)
    if data_path is None:
        data_path, fmt = run_dataset(run_dir)
    else:
        fmt = "auto"
    if not data_path:
        raise ValueError(f"{run_dir}: the run's config names no dataset (pass --data)")

    check_precision(precision, device)
    if loaded is None:
        loaded = load_inference_model(model_path, device=device)
    model, record = loaded.model, loaded.record
    prompt_default = "auto" if model.num_classes else "box"
    prompt = prompt or prompt_default
    if overlap not in ("label_map", "independent"):
        raise ValueError(f"overlap must be 'label_map' or 'independent', got {overlap!r}")
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt kind {prompt!r}; valid: {list(PROMPTS)}")
    if part not in ("train", "val", "test"):
        raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
    if prompt == "auto" and not model.num_classes:
        raise ValueError(f"{adapter}: the model has no class tokens; evaluate it with --prompt box or point")
    dataset = load_dataset(data_path, fmt)
    class_ids = list(record.class_ids)
    # a continued run (salt-seg train --continue) names its classes in the model's ids: score this dataset's
    # classes through its task's label -> model-id map
    lut = continual_lut(loaded.meta, str(data_path))
    if lut is not None:
        class_ids = sorted(int(v) for v in lut[lut > 0].tolist())
    test = split.slices(part)
    settings = settings or EvaluationSettings()
    if settings.slice_axis is None:
        settings = dataclasses.replace(settings, slice_axis=record.axis)
    if split.level == "slice" and "volume" in settings.levels:
        settings = dataclasses.replace(settings, levels=("slice",))
    load = loading_transforms(record)

    def cases() -> Iterator[tuple[int | None, str, np.ndarray, np.ndarray, list[float]]]:
        for case_id, wanted in test.items():
            prepared = prepared_from_item(load(case_item(dataset, case_id)), record)
            label = prepared.label
            if label is None:
                raise ValueError(f"{case_id}: a test case without a label cannot be scored")
            if lut is not None:
                label = lut[np.clip(label, 0, len(lut) - 1)] * (label < len(lut))
            slices = list(range(prepared.n_slices)) if wanted is None else list(wanted)
            auto = prompt == "auto"
            res = segment_volume(
                model,
                record,
                prepared,
                None if auto else gt_prompts(label, class_ids, slices, prepared.axis, prompt),
                mode="auto" if auto else "prompts",
                batch_size=batch_size,
                progress=progress,
                desc=case_id,
                settings=inference,
                probabilities=overlap == "independent",
                precision=precision,
            )
            spacing = np.linalg.norm(prepared.affine[:3, :3], axis=0).tolist()
            if overlap == "independent":
                assert res.probabilities is not None  # asked for with overlap="independent"
                for k, cid in enumerate(res.class_names):
                    pred = np.where(res.probabilities[k] > 0.5, cid, 0).astype(np.int64)
                    yield cid, case_id, pred, np.where(label == cid, cid, 0), spacing
            else:
                yield None, case_id, np.asarray(res.label_map), label, spacing

    scores, ids = [], list(class_ids)
    for cid, case_id, pred, gt, spacing in cases():
        case_scores, _ = evaluate_cases(
            [(case_id, pred, gt, spacing)],
            class_ids=class_ids if cid is None else [cid],
            settings=settings,
            slices={case_id: test[case_id]},
        )
        scores.extend(case_scores)
    provenance = {
        "source": "model",
        "model": str(model_path),
        "split": str(split_path),
        "data": str(data_path),
        "part": part,
        "prompt": prompt,
        "prompt_default": prompt_default,
        "overlap": overlap,
        "mirror": bool(getattr(inference, "mirror", False)),
    }
    return EvaluationResult(
        scores,
        ids,
        settings,
        list(test),
        class_names=dict(loaded.class_names),
        split_slices=test,
        provenance=provenance,
    )
