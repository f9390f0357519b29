"""Data pipeline throughput: load + preprocess slices/s for the MNI152 template (189 axial slices).

Scenarios, run interleaved ``--repeats`` times (medians reported):

* **uncached**: a fresh ``SliceDataset(cache=False)`` per pass: read the NIfTI files, validate, orient,
  normalise, then cut and prepare every axial slice (what one epoch costs without a cache).
* **cached**: the same samples from a ``SliceDataset`` whose MONAI ``CacheDataset`` was filled once (fill time
  reported separately): per-slice work only.
* **cached + augment**: as cached, with training augmentation (flip, rotation/zoom, intensity) on.

Usage::

    .venv/bin/python bench/bench_data.py --repeats 3 --image-size 1024 256

Prints a Markdown table (paste into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _timed(fn, *args) -> tuple[float, float]:
    """(wall s, CPU s of this process) of ``fn(*args)``; CPU time is less disturbed by other jobs."""
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w, time.process_time() - c


def _iterate(ds) -> None:
    for i in range(len(ds)):
        ds[i]


def _iterate_fresh(items, rec) -> None:
    """One uncached pass: read, validate, orient and normalise the volume, then every slice."""
    from salt_seg.data import SliceDataset

    _iterate(SliceDataset(items, rec, cache=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from salt_seg.data import AugmentConfig, SliceDataset, load_dataset, prepare_dataset
    from salt_seg.data.pipeline import case_item
    from salt_seg.preprocessing import Preprocessing

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = prepare_dataset("mni152-tissue", Path(tmp) / "mni")
        prep_s = time.perf_counter() - t
        dataset = load_dataset(root)
        items = [case_item(dataset, "mni152")]
        SliceDataset(items, Preprocessing(image_size=32, classes=dataset.classes), cache=True)[0]  # warm up
        rows = []
        for size in args.image_size:
            rec = Preprocessing(intensity="mr", image_size=size, classes=dataset.classes, axis=2)
            t = time.perf_counter()
            cached = SliceDataset(items, rec, cache=True)
            fill_s = time.perf_counter() - t
            augmented = SliceDataset(items, rec, cache=True, train=True, augment=AugmentConfig(), seed=0)
            n = len(cached)
            times: dict[str, list[tuple[float, float]]] = {
                "uncached": [],
                "cached": [],
                "cached + augment": [],
            }
            for _ in range(args.repeats):
                times["uncached"].append(_timed(_iterate_fresh, items, rec))
                times["cached"].append(_timed(_iterate, cached))
                times["cached + augment"].append(_timed(_iterate, augmented))
            for name, ts in times.items():
                wall = statistics.median(t[0] for t in ts)
                cpu = statistics.median(t[1] for t in ts)
                rows.append((size, name, n, wall, n / wall, n / cpu))
            rows.append((size, "cache fill (once)", n, fill_s, float("nan"), float("nan")))
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"repeats {args.repeats}; dataset prepare {prep_s:.1f} s"
    )
    print("| image size | scenario | slices | median wall s / pass | slices/s (wall) | slices/s (CPU time) |")
    print("|---|---|---|---|---|---|")
    for size, name, n, sec, rate, cpu_rate in rows:
        fmt = ("" if rate != rate else f"{rate:.1f}", "" if cpu_rate != cpu_rate else f"{cpu_rate:.1f}")
        print(f"| {size} | {name} | {n} | {sec:.2f} | {fmt[0]} | {fmt[1]} |")


if __name__ == "__main__":
    main()
