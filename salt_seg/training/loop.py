"""``salt-seg train``: the few-shot training loop, readable top to bottom.

set up (run dir, device, ranks) -> base model -> adapter -> data -> optimiser -> for each step: batch, prompts,
loss, step; every ``val_every`` steps: validate, checkpoint, plot -> final adapter + summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salt_seg.training import rundir as rd
from salt_seg.training.batching import batch_indices, derive_seed, make_prompts, shard
from salt_seg.training.config import ExperimentConfig
from salt_seg.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    init_distributed,
)
from salt_seg.training.losses import build_loss, mask_iou, soft_dice
from salt_seg.training.schedule import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """What the loop needs from the data side.

    ``train``/``val`` are indexable datasets whose items are dicts with ``image`` (``3 x S x S`` float tensor,
    model input), ``label`` (``S x S`` int64 label map in model-input space), ``case_id`` and ``slice_index``.
    ``train`` may expose ``set_random_state(seed)`` (MONAI ``Randomizable``) for deterministic augmentation.
    """

    train: Any
    val: Any
    class_ids: list[int]
    split: dict[str, Any] = field(default_factory=dict)
    dataset_hash: str | None = None
    record: Any = (
        None  # the preprocessing record with the dataset's classes, when it differs from the config's
    )


@dataclass
class TrainResult:
    run_dir: Path
    best_val_dice: float
    best_step: int
    steps_done: int
    initial_val_dice: float
    trainable_parameters: int
    seconds: float
    history: list[dict[str, Any]]


def _state_to_save(
    optimizer,
    scheduler,
    scaler,
    step: int,
    best: float,
    best_step: int,
    bad: int,
    init_dice: float,
    seconds: float,
):
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": step,
        "best_val_dice": best,
        "best_step": best_step,
        "bad_validations": bad,
        "initial_val_dice": init_dice,
        "torch_rng": torch.get_rng_state(),
        "seconds": seconds,  # training time so far, all segments of a resumed run together
    }


#: parameter-name prefix -> the TrainSection field holding its group's learning rate
LR_GROUPS = (("mask_decoder.", "lr_decoder"), ("class_tokens.", "lr_class_tokens"), ("hires.", "lr_hires"))


def param_groups(model: torch.nn.Module, tc) -> list[dict[str, Any]]:  # noqa: ANN001 - TrainSection
    """AdamW parameter groups of the trainable tensors: one per part with its own learning rate.

    Each group keeps its name (``group``) so that a resumed optimizer state matches by position.
    """
    from salt_seg.adapters import trainable_parameters

    groups: dict[str, dict[str, Any]] = {}
    for name, p in trainable_parameters(model, named=True):
        key, lr = "rest", tc.lr
        for prefix, field_name in LR_GROUPS:
            if name.startswith(prefix):
                key, lr = field_name, getattr(tc, field_name) or tc.lr
                break
        groups.setdefault(key, {"params": [], "lr": lr, "group": key})["params"].append(p)
    return list(groups.values())


def _fetch(
    ds: Any, indices: list[int], seed: int, step: int, augment: bool
) -> tuple[torch.Tensor, torch.Tensor, list]:
    images, labels, seeds = [], [], []
    for i in indices:
        s = derive_seed("sample", seed, step, i)
        if augment and hasattr(ds, "set_random_state"):
            ds.set_random_state(s)
        item = ds[i]
        images.append(item["image"])
        labels.append(item["label"])
        seeds.append(s)
    return torch.stack(images), torch.stack(labels), seeds


@torch.no_grad()
def validate(model, data: TrainData, cfg: ExperimentConfig, device, dist: DistInfo, keep: int = 0):
    """Mean hard Dice over the validation slices and classes (fixed prompts), reduced across ranks.

    Returns:
        (mean Dice, per-class mean Dice, up to ``keep`` examples ``(image, label, prediction)`` for overlays).
    """
    model.eval()
    n = len(data.val)
    mine = list(range(dist.rank, n, dist.world_size))
    sums = torch.zeros(len(data.class_ids) + 1, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    examples = []
    bs = max(1, cfg.train.batch_size)
    for start in range(0, len(mine), bs):
        idx = mine[start : start + bs]
        images, labels, _ = _fetch(data.val, idx, cfg.train.seed, -1, augment=False)
        seeds = [derive_seed("val", cfg.train.seed, i) for i in idx]
        pb = make_prompts(
            labels, data.class_ids, cfg.train.prompt, seeds, box_jitter=0.0, n_points=cfg.train.points
        )
        if not pb.prompts:
            continue
        logits, _ = model(images.to(device), pb.prompts, pb.image_index)
        up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        dice = soft_dice(up.cpu(), pb.targets)
        for d, cid in zip(dice.tolist(), pb.class_ids, strict=True):
            k = data.class_ids.index(cid) + 1
            sums[k] += d
            counts[k] += 1
            sums[0] += d
            counts[0] += 1
        if len(examples) < keep:
            pred = torch.zeros_like(labels)
            for p, (b, cid) in enumerate(zip(pb.image_index, pb.class_ids, strict=True)):
                pred[b][up[p, 0].cpu() > 0] = cid
            for b in range(images.shape[0]):
                if len(examples) < keep:
                    examples.append((images[b].cpu(), labels[b].cpu(), pred[b]))
    stacked = torch.stack([sums, counts])
    if dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(stacked, op=tdist.ReduceOp.SUM)
    sums, counts = stacked
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    per_class = {cid: float(means[i + 1]) for i, cid in enumerate(data.class_ids)}
    return float(means[0]), per_class, examples


def output_ceiling(data: TrainData, image_size: int, output_size: int) -> dict[str, dict[str, float]]:
    """The resolution ceiling on the validation slices (as the model sees them) at the model's logit grid and at
    SAM's quarter grid, logged so that a user choosing an image size sees what the output grid allows."""
    from salt_seg.evaluation.ceiling import mean_ceiling

    if len(data.val) == 0:
        return {}
    labels = [np.asarray(data.val[i]["label"]) for i in range(len(data.val))]
    grids = sorted({int(output_size), image_size // 4})
    summary = mean_ceiling(labels, data.class_ids, image_size, grids)
    out = {str(g): {str(c): float(v["mean"]) for c, v in per.items() if v["n"]} for g, per in summary.items()}
    for g, per in out.items():
        text = ", ".join(f"class {c} {d:.3f}" for c, d in per.items())
        mark = " (the model's output grid)" if int(g) == output_size else ""
        log.info("resolution ceiling of the validation slices at %sx%s logits%s: %s", g, g, mark, text)
    return out


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: torch.device | str = "cpu",
    data: TrainData | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train an adapter; see the module docstring for the shape of the loop.

    Args:
        cfg: the resolved experiment config.
        run_dir: the run directory (see :mod:`salt_seg.training.rundir`).
        resume: continue ``run_dir`` from ``checkpoints/last``.
        device: torch device.
        data: prepared datasets (built from ``cfg.data`` when ``None``).
        progress: show a progress bar (rank 0).
        stop_after: stop (as if interrupted) after this many steps in total; used to test resume.
    """
    from tqdm.auto import tqdm

    from salt_seg.adapters import (
        adapter_regularization,
        inject_adapters,
        load_adapter,
        save_adapter,
        trainable_parameters,
    )
    from salt_seg.model.checkpoint import load_base_model, state_dict_hash

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    device = torch.device(device)
    dist = init_distributed(device)
    if dist.is_main:
        rd.prepare_run_dir(run_dir, resume=resume)
    barrier(dist)
    if resume:
        from salt_seg.configio import from_dict

        # compared through the typed config, so a key added since the run started takes its default
        saved = from_dict(ExperimentConfig, rd.load_yaml_config(run_dir)).to_dict()
        if saved != cfg.to_dict():
            raise ValueError(
                f"{run_dir}: --resume with a different config; resume takes the run's own config.yaml"
            )
    record = cfg.preprocessing_record()
    adapter_cfg = cfg.adapter_config()
    tc = cfg.train

    if data is None:
        from salt_seg.training.data import build_train_data

        data = build_train_data(cfg, record)
    if data.record is not None:
        record = data.record
    if len(data.train) == 0:
        raise ValueError(
            f"{cfg.data.path or 'dataset'}: no training slices with foreground; check the labels/split"
        )

    # -- model: base + class tokens + adapter, all initialised from the seed without touching global RNG
    needs_tokens = tc.prompt in ("auto", "mixed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        ckpt = cfg.model.checkpoint
        if ckpt is None and resume:  # a randomly initialised base was saved with the run
            ckpt = str(run_dir / "base.safetensors")
        from salt_seg.model.builtin import resolve_checkpoint

        ckpt = resolve_checkpoint(ckpt)
        model, info = load_base_model(
            cfg.model.variant,
            ckpt,
            image_size=record.image_size,
            num_classes=len(data.class_ids) if needs_tokens else 0,
            hires=cfg.model.hires,
        )
        if needs_tokens and model.num_classes != len(data.class_ids):
            model.set_num_classes(len(data.class_ids))
        base_sd = {k: v for k, v in model.state_dict().items() if not k.startswith("class_tokens.")}
        base_hash = info.content_hash if info is not None else state_dict_hash(base_sd)
        if cfg.model.checkpoint is None and dist.is_main and not resume:
            from safetensors.torch import save_file

            tmp = run_dir / ".base.safetensors.tmp"
            save_file(
                {k: v.contiguous() for k, v in base_sd.items()}, str(tmp), metadata={"base_hash": base_hash}
            )
            tmp.replace(run_dir / "base.safetensors")
        inject_adapters(model, adapter_cfg, base_hash=base_hash, progress=progress and dist.is_main)
    model.to(device)
    ceiling = output_ceiling(data, record.image_size, model.output_size) if dist.is_main else {}
    params = trainable_parameters(model)
    n_trainable = sum(p.numel() for p in params)
    meta = {
        "base_variant": model.variant,
        "base_hash": base_hash,
        "base_checkpoint": cfg.model.checkpoint or "run:base.safetensors",
    }

    optimizer = torch.optim.AdamW(param_groups(model, tc), weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
    use_amp = tc.amp != "none" and device.type == "cuda"
    if tc.amp != "none" and not use_amp:
        log.warning("train.amp=%s ignored on %s", tc.amp, device.type)
    amp_dtype = torch.bfloat16 if tc.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and tc.amp == "fp16" else None
    if tc.grad_checkpoint:
        from salt_seg.training.memory import enable_grad_checkpointing

        enable_grad_checkpointing(model)

    start_step, best, best_step, bad, init_dice = 0, -math.inf, -1, 0, float("nan")
    earlier_seconds = 0.0  # time spent by the segments before a resume (up to their last checkpoint)

    def elapsed() -> float:
        return earlier_seconds + time.perf_counter() - t_start

    if resume:
        last = run_dir / "checkpoints" / "last"
        load_adapter(last / "adapter.safetensors", model, expected_base_hash=base_hash)
        state = torch.load(last / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start_step, best, best_step = (
            int(state["step"]),
            float(state["best_val_dice"]),
            int(state["best_step"]),
        )
        bad, init_dice = int(state["bad_validations"]), float(state["initial_val_dice"])
        torch.set_rng_state(state["torch_rng"])
        earlier_seconds = float(state.get("seconds", 0.0))
        if dist.is_main:
            rd.truncate_metrics(run_dir, start_step)
    elif dist.is_main:
        rd.write_config(run_dir, cfg.to_dict())
        rd.atomic_write_json(
            run_dir / "provenance.json",
            rd.provenance(
                {
                    "seed": tc.seed,
                    "device": str(device),
                    "world_size": dist.world_size,
                    "dataset_hash": data.dataset_hash,
                    "base_hash": base_hash,
                    "trainable_parameters": n_trainable,
                }
            ),
        )
        if data.split:
            rd.atomic_write_json(run_dir / "split.json", data.split)

    ddp_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, find_unused_parameters=True)
    loss_fn = build_loss(tc.loss)
    reg_weight = float(adapter_cfg.reg_weight or 0.0)

    def save_checkpoint(kind: str, step: int) -> None:
        if not dist.is_main:
            return
        folder = run_dir / "checkpoints" / kind
        folder.mkdir(parents=True, exist_ok=True)
        save_adapter(
            folder / "adapter.safetensors",
            model,
            adapter_cfg,
            base_variant=model.variant,
            base_hash=base_hash,
            preprocessing=record,
            class_names=record.classes,
            extra={**meta, "step": step},
        )
        buf = _state_to_save(optimizer, scheduler, scaler, step, best, best_step, bad, init_dice, elapsed())
        tmp = folder / ".state.pt.tmp"
        torch.save(buf, tmp)
        tmp.replace(folder / "state.pt")

    if not resume:
        init_dice, _, _ = validate(model, data, cfg, device, dist)
        if dist.is_main:
            rd.append_metrics(run_dir, {"step": 0, "val_dice": init_dice})
    history = rd.read_metrics(run_dir) if dist.is_main else []
    n_train = len(data.train)
    bar = tqdm(
        total=tc.steps,
        initial=start_step,
        disable=not (progress and dist.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    last_val = best if best > -math.inf else init_dice
    step = start_step
    stopped_early = False
    while step < tc.steps:
        if stop_after is not None and step >= stop_after:
            break
        ddp_model.train()
        optimizer.zero_grad(set_to_none=True)
        global_idx = batch_indices(step, tc.batch_size * tc.grad_accum, n_train, tc.seed)
        losses = []
        seen = 0
        for micro in range(tc.grad_accum):
            chunk = global_idx[micro * tc.batch_size : (micro + 1) * tc.batch_size]
            idx = shard(chunk, dist.rank, dist.world_size)
            seen += len(idx)
            images, labels, seeds = _fetch(data.train, idx, tc.seed, step, cfg.data.augment)
            pb = make_prompts(
                labels, data.class_ids, tc.prompt, seeds, box_jitter=tc.box_jitter, n_points=tc.points
            )
            ctx = torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with ctx:
                if pb.prompts:
                    logits, iou_pred = ddp_model(images.to(device), pb.prompts, pb.image_index)
                    up = F.interpolate(
                        logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
                    )
                    targets = pb.targets.to(device)
                    # SAM's IoU head learns the quality of its own mask (inference uses it to drop empty slices)
                    iou_loss = F.mse_loss(iou_pred[:, 0].float(), mask_iou(up.detach(), targets))
                    loss = loss_fn(up, targets) + iou_loss
                else:  # nothing to prompt on this rank's share: keep DDP in step with a zero loss
                    loss = sum(p.sum() * 0.0 for p in params)
                if reg_weight > 0:
                    loss = loss + reg_weight * adapter_regularization(model)
            losses.append(float(loss.detach()))
            loss = loss / tc.grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        mean_loss = float(all_reduce_mean(torch.tensor(np.mean(losses)), dist))
        row: dict[str, Any] = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]}
        if dist.enabled:  # how many samples each rank processed (they split the global batch)
            row["rank_samples"] = all_gather_objects(seen, dist)
        if step % tc.val_every == 0 or step == tc.steps:
            val, per_class, examples = validate(
                model, data, cfg, device, dist, keep=tc.overlays if dist.is_main else 0
            )
            row.update({"val_dice": val, "val_dice_per_class": per_class})
            last_val = val
            improved = val > best
            if improved:
                best, best_step, bad = val, step, 0
            else:
                bad += 1
            save_checkpoint("last", step)
            if improved:
                save_checkpoint("best", step)
                if dist.is_main and examples:
                    from salt_seg.training.plots import plot_overlays

                    plot_overlays(run_dir / "plots" / "val_overlays.png", examples, record)
            if tc.early_stop and bad >= tc.early_stop:
                stopped_early = True
        if dist.is_main:
            rd.append_metrics(run_dir, row)
            history.append(row)
        bar.set_postfix(loss=f"{mean_loss:.4f}", val_dice=f"{last_val:.3f}", refresh=False)
        bar.update(1)
        if stopped_early:
            log.info("early stop at step %d (best %.4f at %d)", step, best, best_step)
            break
    bar.close()
    finished = step >= tc.steps or stopped_early
    seconds = elapsed()
    if dist.is_main and finished:
        import shutil

        src = run_dir / "checkpoints" / ("best" if (run_dir / "checkpoints" / "best").exists() else "last")
        tmp = run_dir / ".adapter.safetensors.tmp"
        shutil.copyfile(src / "adapter.safetensors", tmp)
        tmp.replace(run_dir / "adapter.safetensors")
        from salt_seg.training.plots import plot_curves

        plot_curves(run_dir / "plots" / "curves.png", history)
        rd.atomic_write_json(
            run_dir / "summary.json",
            {
                "best_val_dice": best,
                "best_step": best_step,
                "initial_val_dice": init_dice,
                "steps": step,
                "stopped_early": stopped_early,
                "trainable_parameters": n_trainable,
                "seconds": seconds,
                "adapter": adapter_cfg.name,
                "resolution_ceiling": ceiling,
            },
        )
    barrier(dist)
    return TrainResult(run_dir, best, best_step, step, init_dice, n_trainable, seconds, history)
