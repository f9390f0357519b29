"""Benchmark reduced-precision inference (issue 16, item 2): Dice, speed, and peak memory of a CT-sized predict.

Three measurements, each fp32 against bf16 (and fp16 where the device allows it):

* **Dice** on a run's test slices (``--run RUN``, e.g. the demo's ``DIR/run_salt`` from ``bash scripts/demo.sh
  --out DIR``): :func:`salt_seg.evaluation.model_eval.evaluate_run` with ``precision=...``, per-class mean Dice and
  the largest per-slice Dice change.
* **Speed**: image encoder (batch ``--batch-size``) and decoder (one box per image) of the ``tiny`` and ``small``
  variants at 256 px with the full-resolution branch, repeats in ABBA order, medians and ratios in one run (random
  weights: speed does not depend on them). This is the measurement behind allowing bf16 on this CPU.
* **Peak memory and time** of ``salt-seg predict`` on a synthetic 512 x 512 x ``--ct-slices`` CT (int16 HU,
  written once as uncompressed NIfTI), each precision in its own process: maximum resident set size from
  ``os.wait4`` and wall time (needs ``--run``: the run's class tokens segment every slice). With ``--vit-b`` also
  the peak memory of one ViT-B encoder pass at 1024 px, where the model's activations, not the volume, dominate.

    .venv/bin/python bench/bench_precision.py --run DIR/run_salt --json bench_precision.json
    .venv/bin/python bench/bench_precision.py --skip-ct --skip-dice        # speed only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_seg.io import atomic_write_json


def precisions(device: str) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]


def dice(args: argparse.Namespace) -> dict[str, Any]:
    from salt_seg.evaluation.model_eval import evaluate_run

    out: dict[str, Any] = {"run": args.run}
    per_slice: dict[str, dict[tuple, float]] = {}
    for p in precisions(args.device):
        t = time.perf_counter()
        res = evaluate_run(args.run, device=args.device, progress=False, precision=p)
        seconds = time.perf_counter() - t
        level = "slice" if "slice" in res.summary else "volume"
        out[p] = {
            "seconds": round(seconds, 1),
            "dice": {
                res.class_names.get(int(c), c): round(v["dice"]["mean"], 4)
                for c, v in res.summary[level].items()
                if c != "all"
            },
            "dice_all": round(res.summary[level]["all"]["dice"]["mean"], 4),
        }
        per_slice[p] = {
            (s.case, s.class_id, s.slice_index): s.dice
            for s in res.scores
            if getattr(s, "slice_index", None) is not None and s.dice == s.dice
        }
    for p in precisions(args.device)[1:]:
        common = per_slice["fp32"].keys() & per_slice[p].keys()
        out[p]["max_slice_dice_change"] = round(
            max((abs(per_slice[p][k] - per_slice["fp32"][k]) for k in common), default=0.0), 4
        )
        out[p]["mean_dice_change"] = round(out[p]["dice_all"] - out["fp32"]["dice_all"], 4)
    return out


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    from salt_seg.model import build_model
    from salt_seg.model.precision import autocast
    from salt_seg.model.sam import InputPrompt

    rows = []
    dev = torch.device(args.device)
    for variant in args.variants:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(variant, image_size=256, num_classes=1, hires=True).to(dev).eval()
            x = torch.randn(args.batch_size, 3, 256, 256, device=dev)
        box = torch.tensor([60.0, 70.0, 180.0, 200.0])
        prompts = [InputPrompt(box=box) for _ in range(args.batch_size)]
        enc: dict[str, list[float]] = {p: [] for p in precisions(args.device)}
        dec: dict[str, list[float]] = {p: [] for p in precisions(args.device)}
        order = list(enc)
        for r in range(args.repeats + 1):
            for p in order if r % 2 == 0 else order[::-1]:
                with torch.inference_mode(), autocast(p, dev):
                    t = time.perf_counter()
                    feats = model.encode_images(x)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    model.decode_prompts(feats, prompts)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                if r:  # the first round warms up
                    enc[p].append(t1 - t)
                    dec[p].append(t2 - t1)
        e = {p: statistics.median(v) for p, v in enc.items()}
        d = {p: statistics.median(v) for p, v in dec.items()}
        rows.append(
            {
                "variant": variant,
                "batch": args.batch_size,
                "encoder_s": {p: round(v, 4) for p, v in e.items()},
                "decoder_s": {p: round(v, 4) for p, v in d.items()},
                "encoder_speedup": {p: round(e["fp32"] / v, 3) for p, v in e.items() if p != "fp32"},
                "decoder_speedup": {p: round(d["fp32"] / v, 3) for p, v in d.items() if p != "fp32"},
            }
        )
    return rows


def synthetic_ct(path: Path, slices: int) -> None:
    """A 512 x 512 x ``slices`` int16 CT in HU: air, a body ellipse of soft tissue with organs and a spine."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((xx - 256) / 200) ** 2 + ((yy - 270) / 150) ** 2 <= 1
    liver = ((xx - 200) / 70) ** 2 + ((yy - 240) / 55) ** 2 <= 1
    spine = ((xx - 256) / 22) ** 2 + ((yy - 380) / 22) ** 2 <= 1
    vol = np.full((512, 512, slices), -1000, np.int16)
    for k in range(slices):
        s = np.where(body, 40, -1000).astype(np.float32)
        grow = 0.6 + 0.4 * np.sin(np.pi * k / slices)
        s[liver & (((xx - 200) / (70 * grow)) ** 2 + ((yy - 240) / (55 * grow)) ** 2 <= 1)] = 60
        s[spine] = 700
        vol[:, :, k] = (s + rng.normal(0, 12, s.shape)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.7, 1.0, 1.0])), str(path))


def ct_memory(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": [512, 512, args.ct_slices], "run": args.run}
    with tempfile.TemporaryDirectory() as tmp:
        ct = Path(tmp) / "ct.nii"
        synthetic_ct(ct, args.ct_slices)
        order = precisions(args.device)
        runs: dict[str, list[tuple[float, float]]] = {p: [] for p in order}
        for r in range(args.ct_repeats):
            for p in order if r % 2 == 0 else order[::-1]:
                cmd = [sys.executable, "-m", "salt_seg", "predict", "--model", args.run, "--input", str(ct)]
                cmd += [
                    "--output",
                    str(Path(tmp) / f"out_{p}_{r}"),
                    "--precision",
                    p,
                    "--device",
                    args.device,
                ]
                cmd += ["--threads", str(args.threads), "--no-progress", "--batch-size", str(args.batch_size)]
                t = time.perf_counter()
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t
                if status != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
                runs[p].append((usage.ru_maxrss / 1024, wall))  # KiB -> MiB on Linux
        for p, vals in runs.items():
            out[p] = {
                "peak_rss_mib": round(max(v[0] for v in vals), 1),
                "seconds_median": round(statistics.median(v[1] for v in vals), 1),
                "slices_per_s": round(args.ct_slices / statistics.median(v[1] for v in vals), 2),
            }
    return out


_VITB_CHILD = """
import resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from salt_seg.model import build_model
from salt_seg.model.precision import autocast
model = build_model("vit_b", image_size=1024).eval()
x = torch.randn(1, 3, 1024, 1024)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with torch.inference_mode(), autocast(sys.argv[1], "cpu"):
    t = time.perf_counter()
    model.encode_images(x)
    seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{base} {peak} {seconds}")
"""


def vitb_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of one ViT-B image-encoder pass at 1024 px (random weights), each precision in its own process:
    the model's own share of memory, which the CT predict above hides under the volume's arrays."""
    out: dict[str, Any] = {}
    for p in precisions("cpu"):
        cmd = [sys.executable, "-c", _VITB_CHILD, p, str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        base, peak, seconds = (float(v) for v in res.stdout.split()[-3:])
        out[p] = {
            "rss_after_build_mib": round(base, 1),
            "peak_rss_mib": round(peak, 1),
            "encoder_extra_mib": round(peak - base, 1),
            "seconds": round(seconds, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a trained run directory (Dice on its test slices; the CT predict)")
    p.add_argument("--variants", nargs="+", default=["tiny", "small"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--ct-slices", type=int, default=300)
    p.add_argument("--ct-repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-dice", action="store_true")
    p.add_argument("--skip-ct", action="store_true")
    p.add_argument(
        "--vit-b", action="store_true", help="also the peak memory of one ViT-B 1024 px encoder pass"
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from salt_seg.model.precision import cpu_has_native_bf16

    result: dict[str, Any] = {
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "speed": speed(args),
    }
    if args.run and not args.skip_dice:
        result["dice"] = dice(args)
    if args.run and not args.skip_ct:
        result["ct_predict"] = ct_memory(args)
    if args.vit_b:
        result["vit_b_1024_encoder"] = vitb_memory(args)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
