"""``salt-seg train``: the few-shot training loop, readable top to bottom.

set up (run dir, device, ranks) -> base model -> adapter -> data -> optimiser -> validate the untrained adapter
(step 0, the first candidate for best) and checkpoint it -> for each step: batch, prompts, loss, step; every
``val_every`` steps: validate, plot, checkpoint -> final adapter (the best checkpoint's) + summary.

Checkpoints are whole units published by one rename (:mod:`salt_seg.training.checkpoints`), so a run killed at any
moment resumes (``resume=True``) to the very result of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salt_seg import runs
from salt_seg.io import atomic_write_bytes, atomic_write_json
from salt_seg.training import checkpoints as ck
from salt_seg.training import rundir as rd
from salt_seg.training.batching import derive_seed, make_prompts
from salt_seg.training.config import ExperimentConfig, load_config
from salt_seg.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
)
from salt_seg.training.losses import build_loss, mask_iou, soft_dice
from salt_seg.training.prefetch import StepBatches, fetch, step_batches
from salt_seg.training.schedule import warmup_cosine
from salt_seg.training.types import TrainData

log = logging.getLogger(__name__)


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
    metrics_bytes: int,
):
    return {
        "format": ck.STATE_FORMAT,
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
        "metrics_bytes": metrics_bytes,  # metrics.jsonl's length at this step: a resumed run cuts it back to this
    }


def _improves(val: float, best: float) -> bool:
    """Whether a validation Dice beats the best so far. Without validation slices (Dice NaN) there is nothing to
    compare, and the newest checkpoint stands for the run, as the last one did before step 0 took part."""
    return math.isnan(best) or val > best


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


def build_optimizer(groups: list[dict[str, Any]], tc) -> torch.optim.Optimizer:  # noqa: ANN001 - TrainSection
    """The optimizer ``train.optimizer`` names, over :func:`param_groups` (same groups and learning rates)."""
    galore = {  # what GaLore and Q-GaLore share
        "weight_decay": tc.weight_decay,
        "rank": tc.galore_rank,
        "update_interval": tc.galore_update_interval,
        "scale": tc.galore_scale,
        "min_dim": tc.galore_min_dim,
    }
    if tc.optimizer == "galore":
        from salt_seg.training.galore import GaLoreAdamW, galore_eligible

        projected = sum(galore_eligible(p, tc.galore_min_dim) for g in groups for p in g["params"])
        log.info(
            "GaLore: %d weight matrices projected to rank <= %d (refresh every %d steps, scale %g)",
            projected,
            tc.galore_rank,
            tc.galore_update_interval,
            tc.galore_scale,
        )
        return GaLoreAdamW(groups, **galore)
    if tc.optimizer == "q-galore":
        from salt_seg.training.qgalore import QGaLoreAdamW

        log.info(
            "Q-GaLore: rank <= %d, INT%d projector, %s weights, refresh every %d steps (x%d after %d refreshes "
            "with cosine >= %g)",
            tc.galore_rank,
            tc.qgalore_proj_bits,
            "INT8" if tc.qgalore_int8_weights else "float",
            tc.galore_update_interval,
            tc.qgalore_interval_growth,
            tc.qgalore_patience,
            tc.qgalore_cos_threshold,
        )
        return QGaLoreAdamW(
            groups,
            **galore,
            proj_bits=tc.qgalore_proj_bits,
            group_size=tc.qgalore_group_size,
            int8_weights=tc.qgalore_int8_weights,
            cos_threshold=tc.qgalore_cos_threshold,
            patience=tc.qgalore_patience,
            interval_growth=tc.qgalore_interval_growth,
            seed=tc.seed,
        )
    return torch.optim.AdamW(groups, weight_decay=tc.weight_decay)


@torch.no_grad()
def validate(model, data: TrainData, cfg: ExperimentConfig, device, dist: DistInfo, keep: int = 0):
    """Mean hard Dice over the validation slices and classes (fixed prompts), reduced across ranks; (slice, class)
    pairs where both the ground truth and the answer are empty are left out (they would score 1 for any model that
    answers nothing).

    Returns:
        (mean Dice, per-class mean Dice, up to ``keep`` examples ``(image, label, prediction)`` for overlays).
    """
    model.eval()
    n = len(data.val)
    mine = list(range(dist.rank, n, dist.world_size))
    sums = torch.zeros(len(data.class_ids) + 1, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    examples: list[Any] = []
    bs = max(1, cfg.train.batch_size)
    for start in range(0, len(mine), bs):
        idx = mine[start : start + bs]
        images, labels, _ = fetch(data.val, idx, cfg.train.seed, -1, augment=False)
        seeds = [derive_seed("val", cfg.train.seed, i) for i in idx]
        pb = make_prompts(
            labels, data.class_ids, cfg.train.prompt, seeds, box_jitter=0.0, n_points=cfg.train.points
        )
        if not pb.prompts:
            continue
        logits, _ = model(images.to(device), pb.prompts, pb.image_index)
        up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        dice = soft_dice(up.cpu(), pb.targets)
        # a class absent from both the slice and the answer says nothing about the model: with many classes
        # (colin27-aal's 12) such pairs, scored 1, made an untrained, empty-answering model the best checkpoint
        informative = ((up.cpu() > 0).flatten(1).any(1) | pb.targets.flatten(1).bool().any(1)).tolist()
        for d, cid, use in zip(dice.tolist(), pb.class_ids, informative, strict=True):
            if not use:
                continue
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
        resume: continue ``run_dir`` from its last checkpoint (from step 0 when it has none).
        device: torch device.
        data: prepared datasets (built from ``cfg.data`` when ``None``).
        progress: show a progress bar (rank 0).
        stop_after: stop (as if interrupted) after this many steps in total; used to test resume.

    Raises:
        RunDirWriteError: the run directory cannot be written (disk full, read-only); what was checkpointed stays
            resumable.
        ValueError: bad config or data, ``resume`` with another config, a damaged checkpoint.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    device = torch.device(device)
    dist = init_distributed(device)
    existed = run_dir.exists()
    unused = not resume and (not existed or not any(run_dir.iterdir()))
    try:
        with rd.writing(run_dir):
            return _train(cfg, run_dir, resume, device, dist, data, progress, stop_after, t_start)
    except (ValueError, TypeError, LookupError, FileNotFoundError):  # the user's config or data
        if unused and dist.is_main and run_dir.is_dir() and not runs.published_steps(run_dir):
            # refused before its first checkpoint: leave --out as it was, so that the corrected command can use it
            # again (nothing was trained)
            import shutil

            if existed:
                for child in run_dir.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            else:
                shutil.rmtree(run_dir)
        raise
    finally:
        cleanup(dist)


def _train(
    cfg: ExperimentConfig,
    run_dir: Path,
    resume: bool,
    device: torch.device,
    dist: DistInfo,
    data: TrainData | None,
    progress: bool,
    stop_after: int | None,
    t_start: float,
) -> TrainResult:
    from tqdm.auto import tqdm

    from salt_seg.adapters import (
        adapter_regularization,
        encode_adapter,
        load_adapter,
        trainable_parameters,
    )

    if dist.is_main:
        rd.prepare_run_dir(run_dir, resume=resume, config=cfg.to_dict())
        ck.fault("configured")
    barrier(dist)
    if resume:
        # compared through the typed config, so a key added since the run started takes its default
        if load_config(run_dir / runs.RUN_MARKER) != cfg:
            raise ValueError(
                f"{run_dir}: --resume with a different config; resume takes the run's own config.yaml"
            )
    # the last checkpoint unit, checked whole; a run killed before its first one starts again from step 0
    unit = ck.load_last(run_dir) if resume else None
    fresh = unit is None
    if resume and fresh:
        log.info("%s: no checkpoint yet; starting again from step 0", run_dir)
    record = cfg.preprocessing
    adapter_cfg = cfg.adapter
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

    continuation = None
    if (
        tc.continue_from
    ):  # continual training: the earlier run's classes kept, this dataset's renamed after them
        from salt_seg.training.continual import Continuation

        continuation = Continuation(cfg, data)
        data, record = continuation.data, continuation.data.record

    # -- model: base + class tokens + adapter, all initialised from the seed without touching global RNG (the same
    # function ``salt-seg params --config`` counts with)
    from salt_seg.training.model import build_training_model

    own_base = (
        cfg.model.checkpoint is None and not fresh
    )  # a randomly initialised base was saved with the run
    built = build_training_model(
        cfg,
        continuation.num_classes if continuation is not None else len(data.class_ids),
        checkpoint=str(run_dir / "base.safetensors")
        if own_base
        else (continuation.base_checkpoint if continuation is not None else None),
        progress=progress and dist.is_main,
    )
    model, base_hash = built.model, built.base_hash
    if cfg.model.checkpoint is None and dist.is_main and fresh:
        from safetensors.torch import save

        base_sd = {k: v.contiguous() for k, v in built.base_state.items()}
        atomic_write_bytes(run_dir / "base.safetensors", save(base_sd, metadata={"base_hash": base_hash}))
        ck.fault("base-written")
    if continuation is not None:  # before a resumed unit is loaded: the constraints come from the earlier run
        continuation.attach(model, base_hash, progress=progress and dist.is_main)
    model.to(device)
    if continuation is not None:
        continuation.to(device)
    ceiling = output_ceiling(data, record.image_size, model.output_size) if dist.is_main else {}
    params = trainable_parameters(model)
    n_trainable = sum(p.numel() for p in params)
    meta = {
        "base_variant": model.variant,
        "base_hash": base_hash,
        "base_checkpoint": cfg.model.checkpoint or "run:base.safetensors",
    }
    if continuation is not None:
        meta["continual"] = continuation.metadata(run_dir)

    optimizer = build_optimizer(param_groups(model, tc), tc)
    use_amp = tc.amp != "none" and device.type == "cuda"
    if tc.amp != "none" and not use_amp:
        log.warning("train.amp=%s ignored on %s", tc.amp, device.type)
    amp_dtype = torch.bfloat16 if tc.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and tc.amp == "fp16" else None
    if tc.grad_checkpoint:
        from salt_seg.training.memory import enable_grad_checkpointing

        enable_grad_checkpointing(model)

    start_step, best, best_step, bad, init_dice = 0, math.nan, 0, 0, math.nan
    earlier_seconds = 0.0  # time spent by the segments before a resume (up to their last checkpoint)

    def elapsed() -> float:
        return earlier_seconds + time.perf_counter() - t_start

    scheduler = warmup_cosine(
        optimizer,
        tc.steps,
        tc.warmup_steps,
        tc.min_lr_ratio,
        time_fraction=(lambda: elapsed() / tc.time_limit) if tc.time_limit > 0 else None,
    )

    if unit is not None:
        load_adapter(unit.adapter, model, expected_base_hash=base_hash)
        state = unit.state
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
            rd.truncate_metrics(run_dir, int(state["metrics_bytes"]))
            ck.prune(run_dir, keep={start_step, best_step})
    if dist.is_main and resume:  # temporary files of writes the interruption cut short
        rd.remove_leftovers(run_dir)
        rd.remove_leftovers(run_dir / "plots")
    if fresh and dist.is_main:
        rd.truncate_metrics(run_dir, 0)  # rows of a run killed before its first checkpoint
        atomic_write_json(
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
            default=str,
        )
        if data.split:
            atomic_write_json(run_dir / "split.json", data.split, default=str)

    ddp_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, find_unused_parameters=True)
    loss_fn = build_loss(tc.loss)
    reg_weight = float(adapter_cfg.reg_weight or 0.0)

    def save_checkpoint(step: int, metrics_bytes: int) -> None:
        """One unit: the adapter, the training state and the metrics offset, published by one rename."""
        if not dist.is_main:
            return
        blob = encode_adapter(
            model,
            adapter_cfg,
            base_variant=model.variant,
            base_hash=base_hash,
            preprocessing=record,
            class_names=record.classes,
            extra={**meta, "step": step, "best_step": best_step},
        )
        state = _state_to_save(
            optimizer, scheduler, scaler, step, best, best_step, bad, init_dice, elapsed(), metrics_bytes
        )
        ck.write_unit(run_dir, step, blob, state)

    def plot_best(examples: list) -> None:
        if dist.is_main and examples:
            from salt_seg.training.plots import plot_overlays

            plot_overlays(run_dir / "plots" / "val_overlays.png", examples, record)

    if fresh:
        # step 0: the untrained adapter is the first candidate for best, and the first checkpoint
        init_dice, _, examples = validate(
            model, data, cfg, device, dist, keep=tc.overlays if dist.is_main else 0
        )
        best, best_step = init_dice, 0
        ck.fault("initial-validation")
        plot_best(examples)
        offset = rd.append_metrics(run_dir, {"step": 0, "val_dice": init_dice}) if dist.is_main else 0
        save_checkpoint(0, offset)
    history = runs.read_metrics(run_dir) if dist.is_main else []
    batch_iter = step_batches(
        StepBatches(
            data.train,
            tc,
            data.class_ids,
            cfg.data.augment,
            dist.rank,
            dist.world_size,
            first_step=start_step,
        ),
        tc.num_workers,
    )
    bar = tqdm(
        total=tc.steps,
        initial=start_step,
        disable=not (progress and dist.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    last_val = best
    step = start_step
    # a run resumed from the checkpoint that stopped it early is finished (killed while exporting)
    stopped_early = bool(tc.early_stop and bad >= tc.early_stop)
    timed_out = bool(tc.time_limit) and not fresh and elapsed() >= tc.time_limit
    while step < tc.steps and not stopped_early and not timed_out:
        if stop_after is not None and step >= stop_after:
            break
        ck.fault("step")
        ddp_model.train()
        optimizer.zero_grad(set_to_none=True)
        losses = []
        seen = 0
        for mb in next(batch_iter):
            images, labels, pb = mb.images, mb.labels, mb.prompts
            seen += mb.samples
            ctx = torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with ctx:
                if pb.prompts:
                    logits, iou_pred = ddp_model(images.to(device), pb.prompts, pb.image_index)
                    up = F.interpolate(
                        logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
                    )
                    targets = pb.targets.to(device)
                    # SAM's IoU head (part of the mask decoder) learns the quality of its own mask where the decoder
                    # trains (adapter.train_mask_decoder); inference reads it only with confidence "iou" or a
                    # propagation IoU threshold, both off by default
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
        if continuation is not None:
            continuation.before_step()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if continuation is not None:
            continuation.after_step()
        scheduler.step()
        step += 1
        mean_loss = float(all_reduce_mean(torch.tensor(np.mean(losses)), dist))
        row: dict[str, Any] = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]}
        if dist.enabled:  # how many samples each rank processed (they split the global batch)
            row["rank_samples"] = all_gather_objects(seen, dist)
        timed_out = bool(tc.time_limit) and elapsed() >= tc.time_limit
        validated = step % tc.val_every == 0 or step == tc.steps or timed_out
        if validated:
            val, per_class, examples = validate(
                model, data, cfg, device, dist, keep=tc.overlays if dist.is_main else 0
            )
            row.update({"val_dice": val, "val_dice_per_class": per_class})
            last_val = val
            if _improves(val, best):
                best, best_step, bad = val, step, 0
                plot_best(examples)
            else:
                bad += 1
            if tc.early_stop and bad >= tc.early_stop:
                stopped_early = True
        offset = 0
        if dist.is_main:  # the row goes in before the checkpoint that records the file's length
            offset = rd.append_metrics(run_dir, row)
            history.append(row)
        if validated:
            save_checkpoint(step, offset)
        bar.set_postfix(loss=f"{mean_loss:.4f}", val_dice=f"{last_val:.3f}", refresh=False)
        bar.update(1)
        if stopped_early:
            log.info("early stop at step %d (best %.4f at %d)", step, best, best_step)
            break
        if timed_out:
            log.info(
                "time limit of %g s reached at step %d (best %.4f at %d)",
                tc.time_limit,
                step,
                best,
                best_step,
            )
    bar.close()
    batch_iter.close()  # stops the workers of a run that ends before its last step
    finished = step >= tc.steps or stopped_early or timed_out
    seconds = elapsed()
    svd: dict[str, int] = {}
    if hasattr(optimizer, "svd_counts"):  # Q-GaLore: SVDs done vs a fixed refresh schedule
        svd["svd_refreshes"], svd["svd_refreshes_fixed_schedule"] = optimizer.svd_counts()
        log.info(
            "Q-GaLore: %d SVDs (a fixed schedule: %d)",
            svd["svd_refreshes"],
            svd["svd_refreshes_fixed_schedule"],
        )
    if dist.is_main and finished:
        best_unit = runs.unit_path(run_dir, best_step) / "adapter.safetensors"
        atomic_write_bytes(run_dir / "adapter.safetensors", best_unit.read_bytes())
        ck.fault("exported")
        from salt_seg.training.plots import plot_curves

        plot_curves(run_dir / "plots" / "curves.png", history)
        atomic_write_json(
            run_dir / "summary.json",
            {
                "best_val_dice": best,
                "best_step": best_step,
                "initial_val_dice": init_dice,
                "steps": step,
                "stopped_early": stopped_early,
                "time_limited": timed_out,
                "trainable_parameters": n_trainable,
                "seconds": seconds,
                "adapter": adapter_cfg.name,
                "resolution_ceiling": ceiling,
            }
            | svd,
            default=str,
        )
    barrier(dist)
    return TrainResult(run_dir, best, best_step, step, init_dice, n_trainable, seconds, history)
