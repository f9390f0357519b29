"""Zero-shot prompted segmentation of real structures by a base model (no adaptation): issue 13, acceptance 3.

For every labelled structure on every ``--every``-th slice of a dataset (colin27-aal by default: deep grey
nuclei, hippocampus and amygdala on a real T1 MRI), prompt the base with

* the structure's tight bounding box from the ground truth, and
* one positive click at its interior point farthest from the boundary,

and score the mask against the ground truth (Dice, slice pixels). ``box`` is what the viewer returns (the mask
clipped to the box, :func:`salt_seg.model.predictor.clip_logits_to_box`); ``box raw`` the model's own mask, with
the share of its pixels that lie outside the box (``raw out``); recall and precision are the clipped mask's. The "fill the box" baseline (every pixel of
the box) says how much the box alone explains. Bases are compared side by side in one run.

    python bench/zeroshot.py --data data/colin27-aal --bases builtin_v1 builtin --axis 2 --every 2 --mirror

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: structure sizes (pixels on the slice) the results are also broken down by
SIZE_BINS = ((0, 50), (50, 100), (100, 200), (200, 400), (400, 10**9))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from the background (deterministic)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), mask.shape)
    return float(x), float(y)


def score_base(
    checkpoint: str, data: Path, axis: int, every: int, intensity: str, mirror: bool = False
) -> dict:
    import dataclasses

    import torch

    from salt_seg.data import load_dataset
    from salt_seg.data.pipeline import case_item, loading_transforms, prepared_from_item
    from salt_seg.inference.backend import slice_array
    from salt_seg.inference.loading import load_base_for_prompts
    from salt_seg.model.predictor import Predictor
    from salt_seg.prompts import Prompt

    model, record = load_base_for_prompts(checkpoint, intensity=intensity)
    ds = load_dataset(data)
    record = dataclasses.replace(record, axis=axis, classes=dict(ds.classes))
    predictor = Predictor(model, record, cache_size=2, mirror=mirror)
    rows: list[dict] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for case in ds.cases:
            prepared = prepared_from_item(loading_transforms(record)(case_item(ds, case.case_id)), record)
            for i in range(0, prepared.n_slices, every):
                lab = prepared.slice_label(i)
                present = [int(c) for c in np.unique(lab) if c > 0]
                if not present:
                    continue
                predictor.set_image(slice_array(prepared, i), (case.case_id, i), (0.0, 1.0))
                for cid in present:
                    m = lab == cid
                    if m.sum() < 4:
                        continue
                    ys, xs = np.nonzero(m)
                    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
                    fill = np.zeros_like(m)
                    fill[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
                    pb = predictor.predict(Prompt(box=box, class_id=cid)).mask
                    raw = predictor.predict(Prompt(box=box, class_id=cid), clip_to_box=False).mask
                    pp = predictor.predict(
                        Prompt(points=[interior_point(m)], point_labels=[1], class_id=cid)
                    ).mask
                    rows.append(
                        {
                            "case": case.case_id,
                            "slice": i,
                            "class": cid,
                            "pixels": int(m.sum()),
                            "box": _dice(pb, m),
                            "box_raw": _dice(raw, m),
                            "raw_outside": float((raw & ~fill).sum() / max(int(raw.sum()), 1)),
                            "recall": float((pb & m).sum() / m.sum()),
                            "precision": float((pb & m).sum() / max(int(pb.sum()), 1)),
                            "fill_box": _dice(fill, m),
                            "point": _dice(pp, m),
                        }
                    )
    keys = ("box", "box_raw", "fill_box", "point", "raw_outside", "recall", "precision")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    per_class = {}
    for cid in sorted({r["class"] for r in rows}):
        sel = [r for r in rows if r["class"] == cid]
        per_class[ds.classes.get(cid, str(cid))] = {k: float(np.mean([r[k] for r in sel])) for k in keys} | {
            "n": len(sel)
        }
    by_size = {}
    for lo, hi in SIZE_BINS:
        sel = [r for r in rows if lo <= r["pixels"] < hi]
        if sel:
            by_size[f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"] = {
                k: float(np.mean([r[k] for r in sel])) for k in keys
            } | {"n": len(sel)}
    return {
        "checkpoint": checkpoint,
        "mirror": mirror,
        "hires": model.hires is not None,
        "n": len(rows),
        "seconds": time.perf_counter() - t0,
        **out,
        "per_class": per_class,
        "by_size": by_size,
    }


def _name(r: dict) -> str:
    return Path(r["checkpoint"]).name + (" (mirror)" if r["mirror"] else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", required=True, help="a prepared dataset (salt-seg data prepare colin27-aal --out DIR)"
    )
    ap.add_argument("--bases", nargs="+", default=["builtin_v1", "builtin"], help="built-in names or files")
    ap.add_argument("--axis", type=int, default=2, help="slice axis of the RAS volume (2 axial, 1 coronal)")
    ap.add_argument("--every", type=int, default=2, help="score every n-th slice (default 2)")
    ap.add_argument("--intensity", default="mr", help="intensity normalisation for the base (default mr)")
    ap.add_argument(
        "--mirror",
        action="store_true",
        help="also score each base with test-time mirroring (Predictor(mirror=True), the viewer's --mirror)",
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    views = (False, True) if args.mirror else (False,)
    results = [
        score_base(b, Path(args.data), args.axis, args.every, args.intensity, mirror=m)
        for b in args.bases
        for m in views
    ]
    print(f"zero-shot on {args.data} (axis {args.axis}, every {args.every} slice(s))")
    print(
        f"{'base':34s} {'n':>6s} {'box':>7s} {'box raw':>8s} {'point':>7s} {'fill-box':>9s} "
        f"{'raw out':>8s} {'recall':>7s} {'prec':>6s} {'s':>6s}"
    )
    for r in results:
        print(
            f"{_name(r):34s} {r['n']:6d} {r['box']:7.3f} {r['box_raw']:8.3f} {r['point']:7.3f} "
            f"{r['fill_box']:9.3f} {r['raw_outside']:8.3f} {r['recall']:7.3f} {r['precision']:6.3f} "
            f"{r['seconds']:6.0f}"
        )
    print("box (clipped) / fill-the-box by structure size in slice pixels:")
    for r in results:
        cells = [f"{k}: {v['box']:.2f}/{v['fill_box']:.2f} (n {v['n']})" for k, v in r["by_size"].items()]
        print(f"  {_name(r):32s} " + "; ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
