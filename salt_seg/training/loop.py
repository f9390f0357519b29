"""``salt-seg train``: the few-shot training loop, readable top to bottom.

set up (run dir, device, ranks) -> base model -> adapter -> data -> optimiser -> validate the untrained adapter
(step 0, the first candidate for best) and checkpoint it -> for each step: batch, prompts, loss, step; every
``val_every`` steps: validate, plot, checkpoint -> final adapter (the best checkpoint's) + summary.

These are the methods of :class:`Trainer`, whose one state object (:class:`~salt_seg.training.checkpoints.TrainState`)
is what a checkpoint saves. Checkpoints are whole units published by one rename
(:mod:`salt_seg.training.checkpoints`), so a run killed at any moment resumes (``resume=True``) to the very result of
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from safetensors.torch import save
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from salt_seg import runs
from salt_seg.adapters import adapter_regularization, encode_adapter, load_adapter, trainable_parameters
from salt_seg.data.ceiling import ceiling_values
from salt_seg.io import atomic_write_bytes, atomic_write_json
from salt_seg.training import checkpoints as ck
from salt_seg.training import rundir as rd
from salt_seg.training.batching import derive_seed, make_prompts
from salt_seg.training.config import ExperimentConfig, load_config
from salt_seg.training.continual import Continuation
from salt_seg.training.data import build_train_data
from salt_seg.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
)
from salt_seg.training.ema import ParamEma
from salt_seg.training.galore import GaLoreAdamW, galore_eligible
from salt_seg.training.losses import build_loss, mask_iou, soft_dice
from salt_seg.training.memory import enable_grad_checkpointing
from salt_seg.training.model import build_training_model
from salt_seg.training.plots import plot_curves, plot_overlays
from salt_seg.training.prefetch import MicroBatch, StepBatches, fetch, step_batches
from salt_seg.training.qgalore import QGaLoreAdamW
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
        tdist.all_reduce(stacked, op=tdist.ReduceOp.SUM)
    sums, counts = stacked
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    per_class = {cid: float(means[i + 1]) for i, cid in enumerate(data.class_ids)}
    return float(means[0]), per_class, examples


def output_ceiling(data: TrainData, image_size: int, output_size: int) -> dict[str, dict[str, float]]:
    """The resolution ceiling on the validation slices (as the model sees them) at the model's logit grid and at
    SAM's quarter grid, logged so that a user choosing an image size sees what the output grid allows."""
    if len(data.val) == 0:
        return {}
    labels = [np.asarray(data.val[i]["label"]) for i in range(len(data.val))]
    values = ceiling_values(labels, data.class_ids, image_size, sorted({int(output_size), image_size // 4}))
    out = {
        str(g): {str(c): float(np.mean(np.asarray(v, dtype=np.float64))) for c, v in per.items() if v}
        for g, per in values.items()
    }
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
            trainer = Trainer(
                cfg,
                run_dir,
                resume=resume,
                device=device,
                dist=dist,
                data=data,
                progress=progress,
                t_start=t_start,
            )
            return trainer.run(stop_after)
    except (ValueError, TypeError, LookupError, FileNotFoundError):  # the user's config or data
        if unused and dist.is_main and run_dir.is_dir() and not runs.published_steps(run_dir):
            # refused before its first checkpoint: leave --out as it was, so that the corrected command can use it
            # again (nothing was trained)
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


class Trainer:
    """One training run.

    The constructor sets the run up: the run directory (and the last checkpoint unit when resuming), the data, the
    model with its adapter, the optimizer and schedule, and restores the unit. :meth:`run` trains: one
    :meth:`step` at a time, validating and checkpointing every ``val_every`` steps, then exports the best adapter
    and the summary (:meth:`finish`).

    :attr:`state` (:class:`~salt_seg.training.checkpoints.TrainState`) holds the run's counters; each checkpoint
    unit saves it with the optimizer's, scheduler's, scaler's and RNG's states (:meth:`save_checkpoint`) beside the
    adapter, and ``--resume`` starts from the one it reads (:meth:`_restore`).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        *,
        resume: bool,
        device: torch.device,
        dist: DistInfo,
        data: TrainData | None,
        progress: bool,
        t_start: float,
    ) -> None:
        self.cfg, self.tc = cfg, cfg.train
        self.run_dir, self.device, self.dist, self.progress = run_dir, device, dist, progress
        self.t_start = t_start
        self.earlier_seconds = 0.0  # time spent by the segments before a resume (up to their last checkpoint)
        self.clock = 0.0  # share of train.time_limit used, as the ranks agree on it (read_clock)
        self.state = ck.TrainState()
        unit = self._open_run_dir(resume)
        self.fresh = unit is None
        self.data, self.record, self.continuation = self._load_data(data)
        self._build_model()
        self._build_optimizer()
        if unit is not None:
            self._restore(unit)
        self._write_run_files(resume)
        self.ddp_model: torch.nn.Module = self.model
        if dist.enabled:
            self.ddp_model = DistributedDataParallel(self.model, find_unused_parameters=True)
        self.loss_fn = build_loss(self.tc.loss)
        self.reg_weight = float(cfg.adapter.reg_weight or 0.0)

    def elapsed(self) -> float:
        """Training time so far, the segments before a resume included."""
        return self.earlier_seconds + time.perf_counter() - self.t_start

    def read_clock(self) -> float:
        """The share of ``train.time_limit`` used so far, the same on every rank (their mean), kept in
        :attr:`clock` for the schedule and the stop: ranks that read their own clocks would step with different
        learning rates and could disagree about the last step."""
        self.clock = float(all_reduce_mean(torch.tensor(self.elapsed() / self.tc.time_limit), self.dist))
        return self.clock

    # --- set-up -----------------------------------------------------------------------------------------------------
    def _open_run_dir(self, resume: bool) -> ck.Unit | None:
        """Create (or check, when resuming) the run directory; the last checkpoint unit, checked whole, or ``None``
        (a fresh run, or one killed before its first unit: it starts again from step 0)."""
        cfg, run_dir = self.cfg, self.run_dir
        if self.dist.is_main:
            rd.prepare_run_dir(run_dir, resume=resume, config=cfg.to_dict())
            ck.fault("configured")
        barrier(self.dist)
        if resume:
            # compared through the typed config, so a key added since the run started takes its default
            if load_config(run_dir / runs.RUN_MARKER) != cfg:
                raise ValueError(
                    f"{run_dir}: --resume with a different config; resume takes the run's own config.yaml"
                )
        unit = ck.load_last(run_dir) if resume else None
        if resume and unit is None:
            log.info("%s: no checkpoint yet; starting again from step 0", run_dir)
        return unit

    def _load_data(self, data: TrainData | None) -> tuple[TrainData, Any, Any]:
        """The datasets, the preprocessing record and, for continual training, the
        :class:`~salt_seg.training.continual.Continuation` (the earlier run's classes kept, this dataset's renamed
        after them)."""
        cfg = self.cfg
        record = cfg.preprocessing
        if data is None:
            data = build_train_data(cfg, record)
        if data.record is not None:
            record = data.record
        if len(data.train) == 0:
            raise ValueError(
                f"{cfg.data.path or 'dataset'}: no training slices with foreground; check the labels/split"
            )
        continuation = None
        if self.tc.continue_from:
            continuation = Continuation(cfg, data)
            data, record = continuation.data, continuation.data.record
        return data, record, continuation

    def _build_model(self) -> None:
        """Base + class tokens + adapter, all initialised from the seed without touching global RNG (the same
        function ``salt-seg params --config`` counts with); a randomly initialised base is saved with the run."""

        cfg, dist, continuation = self.cfg, self.dist, self.continuation
        own_base = (
            cfg.model.checkpoint is None and not self.fresh
        )  # a randomly initialised base saved with the run
        if own_base:
            checkpoint: str | None = str(self.run_dir / "base.safetensors")
        else:
            checkpoint = continuation.base_checkpoint if continuation is not None else None
        built = build_training_model(
            cfg,
            continuation.num_classes if continuation is not None else len(self.data.class_ids),
            checkpoint=checkpoint,
            progress=self.progress and dist.is_main,
        )
        self.model, self.base_hash = built.model, built.base_hash
        if cfg.model.checkpoint is None and dist.is_main and self.fresh:
            base_sd = {k: v.contiguous() for k, v in built.base_state.items()}
            atomic_write_bytes(
                self.run_dir / "base.safetensors", save(base_sd, metadata={"base_hash": self.base_hash})
            )
            ck.fault("base-written")
        if (
            continuation is not None
        ):  # before a resumed unit is loaded: the constraints come from the earlier run
            continuation.attach(self.model, self.base_hash, progress=self.progress and dist.is_main)
        self.model.to(self.device)
        if continuation is not None:
            continuation.to(self.device)
        self.ceiling = (
            output_ceiling(self.data, self.record.image_size, self.model.output_size) if dist.is_main else {}
        )
        named = trainable_parameters(self.model, named=True)
        self.params = [p for _, p in named]
        self.n_trainable = sum(p.numel() for p in self.params)
        self.ema = ParamEma(named, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.meta: dict[str, Any] = {
            "base_variant": self.model.variant,
            "base_hash": self.base_hash,
            "base_checkpoint": cfg.model.checkpoint or "run:base.safetensors",
        }
        if continuation is not None:
            self.meta["continual"] = continuation.metadata(self.run_dir)

    def _build_optimizer(self) -> None:
        """The optimizer, mixed precision (and fp16's gradient scaler), gradient checkpointing, and the schedule
        (which follows the clock too under ``train.time_limit``)."""
        tc, device = self.tc, self.device
        self.optimizer = build_optimizer(param_groups(self.model, tc), tc)
        self.use_amp = tc.amp != "none" and device.type == "cuda"
        if tc.amp != "none" and not self.use_amp:
            log.warning("train.amp=%s ignored on %s", tc.amp, device.type)
        self.amp_dtype = torch.bfloat16 if tc.amp == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp and tc.amp == "fp16" else None
        if tc.grad_checkpoint:
            enable_grad_checkpointing(self.model)
        self.scheduler = warmup_cosine(
            self.optimizer,
            tc.steps,
            tc.warmup_steps,
            tc.min_lr_ratio,
            time_fraction=(lambda: self.clock) if tc.time_limit > 0 else None,
        )

    def _restore(self, unit: ck.Unit) -> None:
        """Continue from a checkpoint unit: its adapter, optimizer, scheduler, scaler and RNG, its counters, and
        ``metrics.jsonl`` cut back to the unit's length."""

        load_adapter(unit.adapter, self.model, expected_base_hash=self.base_hash)
        saved = unit.train_state
        if self.ema is not None:  # the unit's adapter is the average; state.pt has the raw tensors
            if not saved.raw_weights:
                raise ValueError(
                    f"{unit.path}: damaged checkpoint (train.ema_decay, but no raw weights in state.pt)"
                )
            self.ema.restart_from_parameters()
            self.ema.load_raw(saved.raw_weights)
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        if self.scaler is not None and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        assert saved.torch_rng is not None
        torch.set_rng_state(saved.torch_rng)
        self.earlier_seconds = saved.seconds
        # the counters; the optimizer's and the others' states live in their objects until the next unit
        self.state = dataclasses.replace(
            saved, optimizer={}, scheduler={}, scaler={}, torch_rng=None, raw_weights={}
        )
        if self.dist.is_main:
            rd.truncate_metrics(self.run_dir, saved.metrics_bytes)
            ck.prune(self.run_dir, keep={saved.step, saved.best_step})

    def _write_run_files(self, resume: bool) -> None:
        """Leftovers of an interrupted run removed; a fresh run's provenance and split."""
        if not self.dist.is_main:
            return
        run_dir, data = self.run_dir, self.data
        if resume:  # temporary files of writes the interruption cut short
            rd.remove_leftovers(run_dir)
            rd.remove_leftovers(run_dir / "plots")
        if self.fresh:
            rd.truncate_metrics(run_dir, 0)  # rows of a run killed before its first checkpoint
            atomic_write_json(
                run_dir / "provenance.json",
                rd.provenance(
                    {
                        "seed": self.tc.seed,
                        "device": str(self.device),
                        "world_size": self.dist.world_size,
                        "dataset_hash": data.dataset_hash,
                        "base_hash": self.base_hash,
                        "trainable_parameters": self.n_trainable,
                    }
                ),
                default=str,
            )
            if data.split:
                atomic_write_json(run_dir / "split.json", data.split, default=str)

    # --- training ---------------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``train.steps`` (or early stop, or the time limit; ``stop_after``: stop as if interrupted after
        that many steps in total), then :meth:`finish`."""

        tc, dist, state = self.tc, self.dist, self.state
        if self.fresh:
            self.validate_untrained()
        history = runs.read_metrics(self.run_dir) if dist.is_main else []
        batch_iter = step_batches(
            StepBatches(
                self.data.train,
                tc,
                self.data.class_ids,
                self.cfg.data.augment,
                dist.rank,
                dist.world_size,
                first_step=state.step,
            ),
            tc.num_workers,
        )
        bar = tqdm(
            total=tc.steps,
            initial=state.step,
            disable=not (self.progress and dist.is_main),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        last_val = state.best_val_dice
        # a run resumed from the checkpoint that stopped it early is finished (killed while exporting)
        stopped_early = bool(tc.early_stop and state.bad_validations >= tc.early_stop)
        timed_out = bool(tc.time_limit) and not self.fresh and self.read_clock() >= 1.0
        while state.step < tc.steps and not stopped_early and not timed_out:
            if stop_after is not None and state.step >= stop_after:
                break
            ck.fault("step")
            row = self.step(next(batch_iter))
            timed_out = bool(tc.time_limit) and self.clock >= 1.0  # read before this step's schedule update
            validated = state.step % tc.val_every == 0 or state.step == tc.steps or timed_out
            if validated:
                last_val = self.validate_step(row)
                if tc.early_stop and state.bad_validations >= tc.early_stop:
                    stopped_early = True
            offset = 0
            if dist.is_main:  # the row goes in before the checkpoint that records the file's length
                offset = rd.append_metrics(self.run_dir, row)
                history.append(row)
            if validated:
                self.save_checkpoint(offset)
            bar.set_postfix(loss=f"{row['loss']:.4f}", val_dice=f"{last_val:.3f}", refresh=False)
            bar.update(1)
            if stopped_early:
                log.info(
                    "early stop at step %d (best %.4f at %d)",
                    state.step,
                    state.best_val_dice,
                    state.best_step,
                )
                break
            if timed_out:
                log.info(
                    "time limit of %g s reached at step %d (best %.4f at %d)",
                    tc.time_limit,
                    state.step,
                    state.best_val_dice,
                    state.best_step,
                )
        bar.close()
        batch_iter.close()  # stops the workers of a run that ends before its last step
        finished = state.step >= tc.steps or stopped_early or timed_out
        return self.finish(history, finished=finished, stopped_early=stopped_early, timed_out=timed_out)

    def step(self, micro_batches: list[MicroBatch]) -> dict[str, Any]:
        """One optimizer step over a step's micro-batches (gradients accumulated); its metrics row."""
        self.ddp_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        seen = 0
        for mb in micro_batches:
            seen += mb.samples
            losses.append(self._backward(mb))
        self._apply_gradients()
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.state.step)
        mean_loss = float(all_reduce_mean(torch.tensor(np.mean(losses)), self.dist))
        row: dict[str, Any] = {
            "step": self.state.step,
            "loss": mean_loss,
            "lr": self.scheduler.get_last_lr()[0],
        }
        if self.dist.enabled:  # how many samples each rank processed (they split the global batch)
            row["rank_samples"] = all_gather_objects(seen, self.dist)
        return row

    def _backward(self, mb: MicroBatch) -> float:
        """Forward and backward of one micro-batch (its gradients scaled for accumulation); its loss."""

        device, pb = self.device, mb.prompts
        ctx = torch.autocast(device.type, dtype=self.amp_dtype) if self.use_amp else contextlib.nullcontext()
        with ctx:
            if pb.prompts:
                logits, iou_pred = self.ddp_model(mb.images.to(device), pb.prompts, pb.image_index)
                up = F.interpolate(
                    logits.float(), size=mb.labels.shape[-2:], mode="bilinear", align_corners=False
                )
                targets = pb.targets.to(device)
                # SAM's IoU head (part of the mask decoder) learns the quality of its own mask where the decoder
                # trains (adapter.train_mask_decoder); inference reads it only with confidence "iou" or a
                # propagation IoU threshold, both off by default
                iou_loss = F.mse_loss(iou_pred[:, 0].float(), mask_iou(up.detach(), targets))
                loss = self.loss_fn(up, targets) + iou_loss
            else:  # nothing to prompt on this rank's share: keep DDP in step with a zero loss
                loss = sum(p.sum() * 0.0 for p in self.params)
            if self.reg_weight > 0:
                loss = loss + self.reg_weight * adapter_regularization(self.model)
        value = float(loss.detach())
        loss = loss / self.tc.grad_accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return value

    def _apply_gradients(self) -> None:
        """Unscale, constrain (continual training), clip, step the optimizer and the schedule."""
        optimizer, scaler, continuation = self.optimizer, self.scaler, self.continuation
        if scaler is not None:
            scaler.unscale_(optimizer)
        if continuation is not None:
            continuation.before_step()
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if continuation is not None:
            continuation.after_step()
        if self.tc.time_limit:
            self.read_clock()
        self.scheduler.step()

    # --- validation and checkpoints ---------------------------------------------------------------------------------
    def _validate(self) -> tuple[float, dict[int, float], list]:
        keep = self.tc.overlays if self.dist.is_main else 0
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            return validate(self.model, self.data, self.cfg, self.device, self.dist, keep=keep)

    def validate_untrained(self) -> None:
        """Step 0: the untrained adapter is the first candidate for best, and the first checkpoint."""
        init_dice, _, examples = self._validate()
        self.state.initial_val_dice = self.state.best_val_dice = init_dice
        self.state.best_step = 0
        ck.fault("initial-validation")
        self._plot_best(examples)
        offset = (
            rd.append_metrics(self.run_dir, {"step": 0, "val_dice": init_dice}) if self.dist.is_main else 0
        )
        self.save_checkpoint(offset)

    def validate_step(self, row: dict[str, Any]) -> float:
        """Validate after a step (the Dice goes into ``row``), keep the best; the validation Dice."""
        val, per_class, examples = self._validate()
        row.update({"val_dice": val, "val_dice_per_class": per_class})
        state = self.state
        if _improves(val, state.best_val_dice):
            state.best_val_dice, state.best_step, state.bad_validations = val, state.step, 0
            self._plot_best(examples)
        else:
            state.bad_validations += 1
        return val

    def _plot_best(self, examples: list) -> None:
        if self.dist.is_main and examples:
            plot_overlays(self.run_dir / "plots" / "val_overlays.png", examples, self.record)

    def save_checkpoint(self, metrics_bytes: int) -> None:
        """One unit of the current step: the adapter and :attr:`state` with the optimizer's, scheduler's, scaler's
        and RNG's states, published by one rename (rank 0)."""
        if not self.dist.is_main:
            return

        state, model, record = self.state, self.model, self.record
        raw: dict[str, torch.Tensor] = {}
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext() as held:
            raw = held or {}  # under EMA: the adapter holds the average, state.pt the raw tensors
            blob = encode_adapter(
                model,
                self.cfg.adapter,
                base_variant=model.variant,
                base_hash=self.base_hash,
                preprocessing=record,
                class_names=record.classes,
                extra={**self.meta, "step": state.step, "best_step": state.best_step},
            )
        state.seconds, state.metrics_bytes = self.elapsed(), metrics_bytes
        unit = dataclasses.replace(
            state,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else {},
            torch_rng=torch.get_rng_state(),
            raw_weights=raw,
        )
        ck.write_unit(self.run_dir, state.step, blob, unit.to_dict())

    # --- the end ----------------------------------------------------------------------------------------------------
    def finish(
        self, history: list[dict[str, Any]], *, finished: bool, stopped_early: bool, timed_out: bool
    ) -> TrainResult:
        """A finished run: the best unit's adapter as the run's adapter, the curves and ``summary.json``."""
        state = self.state
        seconds = self.elapsed()
        svd: dict[str, int] = {}
        if hasattr(self.optimizer, "svd_counts"):  # Q-GaLore: SVDs done vs a fixed refresh schedule
            svd["svd_refreshes"], svd["svd_refreshes_fixed_schedule"] = self.optimizer.svd_counts()
            log.info(
                "Q-GaLore: %d SVDs (a fixed schedule: %d)",
                svd["svd_refreshes"],
                svd["svd_refreshes_fixed_schedule"],
            )
        if self.dist.is_main and finished:
            best_unit = runs.unit_path(self.run_dir, state.best_step) / "adapter.safetensors"
            atomic_write_bytes(self.run_dir / "adapter.safetensors", best_unit.read_bytes())
            ck.fault("exported")

            plot_curves(self.run_dir / "plots" / "curves.png", history)
            atomic_write_json(
                self.run_dir / "summary.json",
                {
                    "best_val_dice": state.best_val_dice,
                    "best_step": state.best_step,
                    "initial_val_dice": state.initial_val_dice,
                    "steps": state.step,
                    "stopped_early": stopped_early,
                    "time_limited": timed_out,
                    "trainable_parameters": self.n_trainable,
                    "seconds": seconds,
                    "adapter": self.cfg.adapter.name,
                    "resolution_ceiling": self.ceiling,
                }
                | svd,
                default=str,
            )
        barrier(self.dist)
        return TrainResult(
            self.run_dir,
            state.best_val_dice,
            state.best_step,
            state.step,
            state.initial_val_dice,
            self.n_trainable,
            seconds,
            history,
        )
