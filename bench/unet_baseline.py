"""The conventional baseline of the SALT paper's table: a MONAI 2-D U-Net trained from scratch on the same shots.

Not a SAM model, so it does not go through ``salt-seg train``; it uses the same split, the same slice pipeline
(:class:`salt_seg.data.SliceDataset`), the same step budget and the same metrics (:mod:`salt_seg.evaluation`) as the
adapters in ``bench/fewshot.py``.

Usage: python bench/unet_baseline.py --data DIR --shots N --seed S --steps N --out RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--shots", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--image-size", type=int, default=128)
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
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from monai.losses import DiceCELoss

    from salt_seg.data import AugmentConfig, SliceDataset, insert_slice, load_dataset, make_split
    from salt_seg.data.pipeline import case_item, loading_transforms, prepared_from_item
    from salt_seg.evaluation import EvaluationSettings, write_results
    from salt_seg.evaluation.runner import EvaluationResult, evaluate_cases
    from salt_seg.preprocessing import Preprocessing, logits_to_original
    from salt_seg.training.batching import batch_indices, derive_seed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    ds = load_dataset(args.data)
    record = Preprocessing(
        intensity="mr", image_size=args.image_size, axis=args.axis, classes=dict(ds.classes)
    )
    split = make_split(
        ds,
        shots=args.shots,
        seed=args.seed,
        level="slice",
        val=args.val,
        test=args.test,
        guard_mm=args.guard_mm,
        axis=args.axis,
    )
    (out / "split.json").write_text(json.dumps(split.to_dict()))
    train = SliceDataset.from_dataset(
        ds, record, split=split, part="train", augment=AugmentConfig(), seed=args.seed, train=True
    )
    torch.manual_seed(args.seed)
    net = build_unet(len(record.classes))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    t0 = time.perf_counter()
    net.train()
    for step in range(args.steps):
        idx = batch_indices(step, args.batch_size, len(train), args.seed)
        xs, ys = [], []
        for i in idx:
            train.set_random_state(derive_seed("sample", args.seed, step, i))
            item = train[i]
            xs.append(item["image"][:1])
            ys.append(item["label"][None])
        x, y = torch.stack(xs), torch.stack(ys)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0

    net.eval()
    load = loading_transforms(record)
    test = split.slices("test")

    @torch.no_grad()
    def cases():
        for case_id, wanted in test.items():
            prepared = prepared_from_item(load(case_item(ds, case_id)), record)
            pred = np.zeros(prepared.label.shape, dtype=np.int64)

            for s in range(prepared.n_slices) if wanted is None else wanted:
                x, tf = prepared.model_input(s)
                logits = net(x[None, :1])[0]
                probs = torch.stack(
                    [logits_to_original(logits[c][None], tf)[0] for c in range(logits.shape[0])]
                )
                insert_slice(pred, prepared.axis, s, probs.argmax(0).numpy())
            spacing = np.linalg.norm(prepared.affine[:3, :3], axis=0).tolist()
            yield case_id, pred, prepared.label, spacing

    settings = EvaluationSettings(levels=("slice",), slice_axis=record.axis)
    scores, ids = evaluate_cases(cases(), class_ids=record.class_ids, settings=settings, slices=test)
    result = EvaluationResult(
        scores, ids, settings, list(test), class_names=dict(record.classes), split_slices=test
    )
    write_results(result, out / "evaluation")
    n_params = sum(p.numel() for p in net.parameters())
    (out / "summary.json").write_text(json.dumps({"seconds": seconds, "trainable_parameters": n_params}))
    print(json.dumps({"out": str(out), "seconds": round(seconds, 1), "trainable_parameters": n_params}))


if __name__ == "__main__":
    main()
