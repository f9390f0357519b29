"""The conventional baseline of the SALT paper's table: a MONAI 2-D U-Net trained from scratch on the same shots,
to convergence.

Not a SAM model, so it does not go through ``salt-seg train``; it uses the same split (``--split FILE``, or one
drawn with the same arguments as ``salt-seg data split``), the same slice pipeline
(:class:`salt_seg.data.SliceDataset`, augmentation on unless ``--no-augment``) and the same metrics
(:mod:`salt_seg.evaluation`) as the adapters in ``bench/fewshot.py``.

Convergence: every ``--val-every`` steps (and at the last step) the network predicts the split's validation
slices at their native resolution and is scored like the test slices; the criterion is the mean over classes of
the per-class mean slice Dice (both-empty slices skipped). The best weights are kept; training stops when
``--patience`` validations in a row (default 20, i.e. 1,000 steps at the default ``--val-every 50``) have not
improved on the best (strictly, as ``salt-seg train``'s ``early_stop``), or at ``--steps`` (the cap, default
5000), or after ``--max-minutes``. The test slices are then scored with the best weights (``salt-seg evaluate``'s
convention: a class absent from both prediction and ground truth on a slice is skipped and counted, a miss or a
false positive scores 0). ``--patience 0`` trains to the cap and still tests the best validated weights.

Usage: python bench/unet_baseline.py --data DIR (--split FILE | --shots N --seed S) --out RUN_DIR
       [--steps CAP] [--val-every 50] [--patience 20] [--max-minutes M] [--image-size 128]

Writes ``RUN_DIR/evaluation/`` (``salt-seg evaluate``'s files), ``summary.json`` (seconds, steps, best
validation step and Dice, stop reason, test Dice per class, validation history) and ``unet_best.pt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


def build_unet(n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=n_classes + 1,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
    )


@dataclass
class EarlyStopping:
    """Keeps the best validation score and counts validations without a strict improvement.

    Attributes:
        patience: stop once this many validations in a row have not beaten the best (0 = never stop).
        min_delta: an improvement must exceed the best by more than this.
        best: best score so far (``-inf`` before the first validation).
        best_step: the step of ``best``.
        bad: validations since the last improvement.
        history: ``(step, score)`` of every validation.
    """

    patience: int = 20
    min_delta: float = 0.0
    best: float = -math.inf
    best_step: int = -1
    bad: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, score: float) -> bool:
        """Record a validation; returns whether it is the new best (a NaN score never is)."""
        self.history.append((int(step), float(score)))
        if not math.isnan(score) and score > self.best + self.min_delta:
            self.best, self.best_step, self.bad = float(score), int(step), 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience


def stop_step(curve: list[tuple[int, float]], patience: int, min_delta: float = 0.0) -> tuple[int, int]:
    """Where :class:`EarlyStopping` stops on a validation curve: ``(stop step, best step)``; the last step when
    it never stops."""
    es = EarlyStopping(patience, min_delta)
    for step, score in curve:
        es.update(step, score)
        if es.should_stop:
            return step, es.best_step
    return (curve[-1][0] if curve else 0), es.best_step


def macro_dice(summary: dict, class_ids: list[int]) -> tuple[float, dict[str, float]]:
    """Mean over classes of the per-class mean slice Dice (classes with no scored slice left out), and the
    per-class means, from :func:`salt_seg.evaluation.summary.aggregate`'s ``"slice"`` level."""
    per_class = {}
    for c in class_ids:
        node = summary.get(str(c))
        if node is not None and node["dice"]["n"] > 0:
            per_class[str(c)] = float(node["dice"]["mean"])
    return (float(np.mean(list(per_class.values()))) if per_class else math.nan), per_class


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument(
        "--split", default=None, help="split JSON (salt-seg data split); else drawn from the flags below"
    )
    ap.add_argument("--shots", type=int, default=None, help="training slices of a drawn split")
    ap.add_argument("--seed", type=int, default=None, help="seed (default: the split's, else 0)")
    ap.add_argument("--steps", "--max-steps", dest="steps", type=int, default=5000, help="step cap")
    ap.add_argument("--val-every", type=int, default=50, help="validate every N steps")
    ap.add_argument(
        "--patience", type=int, default=20, help="validations without improvement before stopping (0 = never)"
    )
    ap.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock cap of training (0 = none)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--no-augment", action="store_true", help="train without augmentation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--axis", type=int, default=2, help="RAS axis of the slices and the split (as preprocessing.axis)"
    )
    ap.add_argument(
        "--val", type=float, default=0.2, help="validation fraction of the labelled range (data.val)"
    )
    ap.add_argument("--test", type=float, default=0.4, help="test fraction of the labelled range (data.test)")
    ap.add_argument(
        "--guard-mm", type=float, default=10.0, help="distance between split parts (data.guard_mm)"
    )
    ap.add_argument("--protocol", default="block", choices=["block", "sparse"], help="drawn split protocol")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.split is None and args.shots is None:
        ap.error("give --split FILE or --shots N")
    torch.set_num_threads(args.threads)

    from monai.losses import DiceCELoss

    from salt_seg.data import AugmentConfig, SliceDataset, insert_slice, load_dataset, load_split, make_split
    from salt_seg.data.pipeline import case_item, loading_transforms, prepared_from_item
    from salt_seg.evaluation import EvaluationSettings, write_results
    from salt_seg.evaluation.runner import EvaluationResult, evaluate_cases
    from salt_seg.evaluation.summary import aggregate
    from salt_seg.preprocessing import Preprocessing, logits_to_original
    from salt_seg.training.batching import batch_indices, derive_seed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    ds = load_dataset(args.data)
    if args.split is not None:
        split = load_split(args.split)
        axis = split.axis
    else:
        axis = args.axis
        split = make_split(
            ds,
            shots=args.shots,
            seed=0 if args.seed is None else args.seed,
            level="slice",
            val=args.val,
            test=args.test,
            guard_mm=args.guard_mm,
            axis=axis,
            protocol=args.protocol,
        )
    seed = split.seed if args.seed is None else args.seed
    record = Preprocessing(intensity="mr", image_size=args.image_size, axis=axis, classes=dict(ds.classes))
    (out / "split.json").write_text(json.dumps(split.to_dict()))
    train = SliceDataset.from_dataset(
        ds,
        record,
        split=split,
        part="train",
        augment=AugmentConfig(),
        seed=seed,
        train=not args.no_augment,
    )
    torch.manual_seed(seed)
    net = build_unet(len(record.classes))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    load = loading_transforms(record)
    prepared_cache: dict[str, Any] = {}
    settings = EvaluationSettings(levels=("slice",), slice_axis=record.axis)
    class_ids = list(record.class_ids)

    def prepared(case_id: str):
        if case_id not in prepared_cache:
            prepared_cache[case_id] = prepared_from_item(load(case_item(ds, case_id)), record)
        return prepared_cache[case_id]

    @torch.no_grad()
    def cases(part: dict[str, list[int] | None]):
        for case_id, wanted in part.items():
            pv = prepared(case_id)
            pred = np.zeros(pv.label.shape, dtype=np.int64)
            for s in range(pv.n_slices) if wanted is None else wanted:
                x, tf = pv.model_input(s)
                logits = net(x[None, :1])[0]
                probs = torch.stack(
                    [logits_to_original(logits[c][None], tf)[0] for c in range(logits.shape[0])]
                )
                insert_slice(pred, pv.axis, s, probs.argmax(0).numpy())
            spacing = np.linalg.norm(pv.affine[:3, :3], axis=0).tolist()
            yield case_id, pred, pv.label, spacing

    def score(part: dict[str, list[int] | None]):
        net.eval()
        try:
            scores, ids = evaluate_cases(cases(part), class_ids=class_ids, settings=settings, slices=part)
        finally:
            net.train()
        return scores, ids

    val_part = split.slices("val")
    has_val = any(v is None or len(v) > 0 for v in val_part.values())
    stopper = EarlyStopping(args.patience)
    best_state = copy.deepcopy(net.state_dict())
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    val_seconds = 0.0
    stopped = "max_steps"
    losses: list[float] = []
    step = 0
    net.train()
    while step < args.steps:
        idx = batch_indices(step, args.batch_size, len(train), seed)
        xs, ys = [], []
        for i in idx:
            train.set_random_state(derive_seed("sample", seed, step, i))
            item = train[i]
            xs.append(item["image"][:1])
            ys.append(item["label"][None])
        x, y = torch.stack(xs), torch.stack(ys)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        out_of_time = args.max_minutes > 0 and time.perf_counter() - t0 >= 60.0 * args.max_minutes
        if has_val and (step % args.val_every == 0 or step == args.steps or out_of_time):
            tv = time.perf_counter()
            val_mean, val_per_class = macro_dice(aggregate(score(val_part)[0]).get("slice", {}), class_ids)
            val_seconds += time.perf_counter() - tv
            if stopper.update(step, val_mean):
                best_state = copy.deepcopy(net.state_dict())
            row = {
                "step": step,
                "loss": float(np.mean(losses)),
                "val_dice": val_mean,
                "val_dice_per_class": val_per_class,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            losses = []
            history.append(row)
            print(json.dumps(row), flush=True)
            if stopper.should_stop:
                stopped = "patience"
                break
        if out_of_time:
            stopped = "time"
            break
    seconds = time.perf_counter() - t0
    if has_val:
        net.load_state_dict(best_state)
    else:
        stopper.best_step = step  # no validation part: the last weights are tested
    torch.save(net.state_dict(), out / "unet_best.pt")

    t1 = time.perf_counter()
    test = split.slices("test")
    scores, ids = score(test)
    result = EvaluationResult(
        scores, ids, settings, list(test), class_names=dict(record.classes), split_slices=test
    )
    write_results(result, out / "evaluation")
    test_seconds = time.perf_counter() - t1
    slice_summary = result.summary.get("slice", {})
    test_dice = {
        str(c): {"name": record.classes[c], **slice_summary.get(str(c), {}).get("dice", {"n": 0})}
        for c in class_ids
    }
    n_params = sum(p.numel() for p in net.parameters())
    summary = {
        "method": "monai_unet",
        "seconds": seconds,
        "validation_seconds": val_seconds,
        "test_seconds": test_seconds,
        "seconds_per_step": seconds / max(step, 1),
        "trainable_parameters": n_params,
        "steps": step,
        "max_steps": args.steps,
        "stopped": stopped,
        "best_step": stopper.best_step,
        "best_val_dice": None if math.isinf(stopper.best) else stopper.best,
        "patience": args.patience,
        "val_every": args.val_every,
        "max_minutes": args.max_minutes,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "augment": not args.no_augment,
        "split": {
            "file": args.split,
            "protocol": split.protocol,
            "shots": split.shots,
            "seed": split.seed,
            "axis": split.axis,
            "guard_mm": split.guard_mm,
        },
        "n_val_slices": sum(len(v or []) for v in val_part.values()),
        "test_dice": test_dice,
        "val_history": history,
    }
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1))
    print(f"{'class':<16} {'Dice mean':>9} {'± std':>7} {'n':>4}")
    for row in test_dice.values():
        print(
            f"{row['name']:<16} {row.get('mean', math.nan):>9.3f} {row.get('std', math.nan):>7.3f} {row['n']:>4d}"
        )
    print(
        json.dumps(
            {
                "out": str(out),
                "seconds": round(seconds, 1),
                "steps": step,
                "best_step": stopper.best_step,
                "best_val_dice": summary["best_val_dice"],
                "stopped": stopped,
                "trainable_parameters": n_params,
            }
        )
    )


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


if __name__ == "__main__":
    main()
