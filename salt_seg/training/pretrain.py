"""Pretraining a small SAM-architecture base from scratch on synthetic objects ("objectness").

Stands in for SAM's natural-image pretraining: every object of a synthetic image is a target, prompted by a box
or by points, so the model learns to segment *the thing prompted*, whatever its kind. Training runs through
:func:`salt_seg.training.loop.train` (progress, checkpoints, resume) with the ``full`` adapter plus the prompt
encoder and mask decoder; the result is exported as a plain SAM-layout state dict in float16.

The held-out set is fixed by the generator parameters and :data:`HELDOUT_SEED`, so the model card's figures can
be reproduced exactly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from scipy import ndimage

from salt_seg.adapters import adapter_layers, load_adapter
from salt_seg.data.anatomy import AnatomyParams
from salt_seg.io import atomic_write_bytes, atomic_write_json
from salt_seg.model.builtin import pretrain_record
from salt_seg.model.checkpoint import load_base_model
from salt_seg.model.sam import InputPrompt
from salt_seg.preprocessing import SliceTransform
from salt_seg.training.anatomy_stream import (
    ANATOMY_HELDOUT_SEED,
    MAX_PROMPTED,
    StreamParams,
    SyntheticAnatomy,
)
from salt_seg.training.config import parse_config
from salt_seg.training.loop import train
from salt_seg.training.objects_stream import (
    HELDOUT_PARAMS,
    HELDOUT_SEED,
    MAX_OBJECTS,
    GeneratorParams,
    SyntheticObjects,
)
from salt_seg.training.types import TrainData

#: what a pretraining run learns from: v1's synthetic objects, or v2's synthetic anatomy (objects mixed in)
PRETRAIN_TASKS = ("objects", "anatomy")


@dataclass
class ObjectnessScores:
    """Held-out Dice of the pretrained base (means over objects)."""

    box: float
    fill_box: float
    one_point: float
    n_objects: int
    per_object: dict[str, list[float]] = field(default_factory=dict)


@torch.no_grad()
def evaluate_objectness(
    model, n_images: int = 100, seed: int = HELDOUT_SEED, params: GeneratorParams = HELDOUT_PARAMS
) -> ObjectnessScores:
    """Dice on the held-out synthetic set: tight box prompts, the "fill the box" baseline, one positive point.

    The point is the interior point farthest from the background (deterministic).
    """
    record = pretrain_record(model.image_size)
    return evaluate_prompted(model, SyntheticObjects(n_images, seed, params, record), params.shape)


def heldout_anatomy(image_size: int, n_images: int = 100):  # noqa: ANN201 - a SyntheticAnatomy
    """The fixed held-out anatomy set (every structure of each slice, no objects mixed in)."""

    params = StreamParams(
        anatomy=AnatomyParams(shape=(image_size, image_size)), objects_fraction=0.0, max_prompted=16
    )
    return SyntheticAnatomy(n_images, ANATOMY_HELDOUT_SEED, params, pretrain_record(image_size))


@torch.no_grad()
def evaluate_prompted(model, ds, shape: tuple[int, int]) -> ObjectnessScores:
    """Box, fill-the-box and one-point Dice over every labelled structure of every item of ``ds``."""

    model.eval()
    n_images = len(ds)
    tf = SliceTransform.create(shape, model.image_size, "longest")
    device = next(model.parameters()).device
    box_d, fill_d, pt_d = [], [], []
    for i in range(n_images):
        item = ds[i]
        inst = item["label"].numpy()
        emb = model.encode_images(item["image"][None].to(device))
        for k in range(1, int(inst.max()) + 1):
            m = inst == k
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
            dist = ndimage.distance_transform_edt(m)
            y, x = np.unravel_index(int(dist.argmax()), m.shape)
            prompts = [
                InputPrompt(box=torch.from_numpy(tf.coords_to_input(box)).float()),
                InputPrompt(
                    points=torch.tensor([[float(x), float(y)]]) * torch.tensor(tf.scale_xy).float(),
                    labels=torch.tensor([1]),
                ),
            ]
            logits, iou = model.decode_prompts(emb, prompts[:1], [0])
            box_pred = _upsample(logits[0, 0], m.shape)
            logits_p, _ = model.decode_prompts(emb, prompts[1:], [0])  # single-mask output, as trained
            pt_pred = _upsample(logits_p[0, 0], m.shape)
            fill = np.zeros_like(m)
            fill[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
            box_d.append(_dice(box_pred, m))
            fill_d.append(_dice(fill, m))
            pt_d.append(_dice(pt_pred, m))
    return ObjectnessScores(
        float(np.mean(box_d)),
        float(np.mean(fill_d)),
        float(np.mean(pt_d)),
        len(box_d),
        {"box": box_d, "fill_box": fill_d, "one_point": pt_d},
    )


def _upsample(low: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:

    up = F.interpolate(low[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0]
    return (up > 0).cpu().numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def export_base(model, path: Path, meta: dict[str, str]) -> None:
    """Write the model's SAM-layout weights (no class tokens) as float16 safetensors, atomically.

    The model must hold plain weights (pretraining uses the ``full`` adapter, which wraps nothing).
    """

    if adapter_layers(model):
        raise RuntimeError("export_base expects an un-wrapped model (adapter 'full')")
    sd = {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("class_tokens.")
    }
    atomic_write_bytes(path, save(sd, metadata=meta))


def run_pretraining(
    *,
    variant: str,
    image_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    run_dir: Path,
    resume: bool,
    device: torch.device,
    export: Path | None,
    heldout: int,
    overrides: list[str] | None = None,
    progress: bool = True,
    init: Path | None = None,
    task: str = "objects",
    hires: bool | None = None,
) -> tuple[ObjectnessScores, Path]:
    """Pretrain, score on the held-out set, and optionally export; returns the scores and the run dir.

    ``task`` is ``objects`` (the v1 bases: synthetic shapes) or ``anatomy`` (base v2: synthetic anatomy with
    objects mixed in, :mod:`salt_seg.training.anatomy_stream`); ``hires`` adds the full-resolution branch.
    """
    if task not in PRETRAIN_TASKS:
        raise ValueError(f"unknown pretraining task {task!r}; valid: {list(PRETRAIN_TASKS)}")

    record = pretrain_record(image_size)
    doc = {
        "description": f"salt-seg pretrain: {variant} from scratch on synthetic objects",
        "model": {
            "variant": variant,
            "checkpoint": str(init) if init else None,
            "image_size": record.image_size,
            "hires": hires,
        },
        "adapter": {
            "name": "full",
            "train_mask_decoder": True,
            "train_prompt_encoder": True,
            "train_class_tokens": False,
        },
        "data": {"path": "synthetic", "augment": False, "cache": False},
        "preprocessing": record.to_dict(),
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": 0.01,
            "warmup_steps": min(200, steps // 10),
            "min_lr_ratio": 0.02,
            "loss": "dice_focal",
            "prompt": "geometric",
            "box_jitter": 0.1,
            "points": 1,
            "val_every": max(1, min(250, steps)),
            "seed": seed,
            "overlays": 4,
        },
    }
    cfg = parse_config(doc, overrides or [])
    params = GeneratorParams(shape=(image_size, image_size))
    heldout_params = dataclasses.replace(HELDOUT_PARAMS, shape=(image_size, image_size))
    if task == "objects":
        data = TrainData(
            train=SyntheticObjects(10**7, seed, params, record),
            val=SyntheticObjects(32, HELDOUT_SEED + 1, heldout_params, record),
            class_ids=list(range(1, MAX_OBJECTS + 1)),
            split={"generator": params.to_dict(), "val_seed": HELDOUT_SEED + 1},
            record=record,
        )
    else:
        stream = StreamParams(anatomy=AnatomyParams(shape=(image_size, image_size)))
        data = TrainData(
            train=SyntheticAnatomy(10**7, seed, stream, record),
            val=SyntheticAnatomy(32, HELDOUT_SEED + 2, stream, record),
            class_ids=list(range(1, MAX_PROMPTED + 1)),
            split={"task": task, "objects_fraction": stream.objects_fraction, "val_seed": HELDOUT_SEED + 2},
            record=record,
        )
    result = train(cfg, run_dir, resume=resume, device=device, data=data, progress=progress)

    base = init if init is not None else run_dir / "base.safetensors"
    model, info = load_base_model(variant, base, image_size=record.image_size, hires=hires)

    expected = info.content_hash if info is not None else None
    load_adapter(run_dir / "adapter.safetensors", model, expected_base_hash=expected, progress=False)
    model.to(device).eval()
    scores = evaluate_objectness(model, heldout, params=heldout_params)
    anatomy = evaluate_prompted(model, heldout_anatomy(image_size, heldout), (image_size, image_size))
    meta = {
        "salt_seg_builtin": "1",
        "variant": variant,
        "steps": str(result.steps_done),
        "seed": str(seed),
        "generator": json.dumps(params.to_dict()),
        "heldout": json.dumps(heldout_params.to_dict() | {"seed": HELDOUT_SEED}),
        "heldout_dice_box": f"{scores.box:.4f}",
        "heldout_dice_fill_box": f"{scores.fill_box:.4f}",
        "heldout_dice_one_point": f"{scores.one_point:.4f}",
        "task": task,
        "anatomy_heldout_dice_box": f"{anatomy.box:.4f}",
        "anatomy_heldout_dice_fill_box": f"{anatomy.fill_box:.4f}",
        "anatomy_heldout_dice_one_point": f"{anatomy.one_point:.4f}",
    }

    atomic_write_json(
        run_dir / "objectness.json",
        {**meta, "n_objects": scores.n_objects, "seconds": result.seconds},
        default=str,
    )
    if export is not None:
        export_base(model.cpu(), export, meta)
    return scores, run_dir
