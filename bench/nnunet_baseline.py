"""nnU-Net v2 baseline on exactly a split's training slices, trained and run through nnU-Net's own CLI.

The split's slices are written as independent 2-D nnU-Net cases (``H x W x 1`` NIfTI, the slice read the way
:func:`salt_seg.evaluation.labelled_slices.iter_labelled_slices` reads it for the floors and the ceiling: RAS,
display orientation, pixel spacing of the volume), then::

    nnUNetv2_plan_and_preprocess -d ID -c 2d --verify_dataset_integrity -npfp 1 -np 1
    nnUNetv2_train ID 2d FOLD -tr TRAINER -device cpu
    nnUNetv2_predict -i imagesTs -o predictions -d ID -c 2d -f FOLD -tr TRAINER -device cpu -npp 1 -nps 1

with ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` set to folders under ``--work``. The test
slices' predictions are scored per slice and class with the project's metrics
(:func:`salt_seg.evaluation.metrics.evaluate_slices`, the convention of ``salt-seg evaluate`` and of
:mod:`salt_seg.evaluation.floors`: a class absent from both prediction and ground truth on a slice is skipped and
counted, a miss or a false positive scores 0; mean ± sample std over slices, n).

Folds:

* ``all`` (default): nnU-Net trains on the split's training slices only (its standard "train on everything"
  fold); the split's validation slices are not written at all, so nothing else enters planning, the intensity
  fingerprint or training. nnU-Net's per-epoch "pseudo Dice" is then measured on training patches.
* ``0``: the validation slices are written too and ``splits_final.json`` makes fold 0 = (train: training slices,
  val: validation slices), so nnU-Net's pseudo Dice, its ``checkpoint_best`` and its final validation use the
  held-out validation part. Caveat: the validation slices then enter the dataset fingerprint (only CT
  normalisation reads it; MR is z-scored per image).

nnU-Net trains a fixed number of epochs (``num_iterations_per_epoch`` = 250 iterations each); the trainer picks
the length (``nnUNetTrainer_5epochs`` ... ``nnUNetTrainer`` = 1000 epochs, in
``nnunetv2/training/nnUNetTrainer/variants/training_length``). Prediction uses ``checkpoint_final.pth``.

Mirroring: nnU-Net mirrors every axis in training and at test time. Where the dataset's class names pair left and
right (``hippocampus_L`` / ``hippocampus_R``, :func:`salt_seg.data.laterality.mirror_pairs`) ``--mirroring auto``
(the default) trains ``TRAINER_NoMirroring`` from ``bench/nnunet_trainers`` instead (found through nnU-Net's
``nnUNet_extTrainer``), since a mirrored slice teaches that the two sides are one class; elsewhere nothing changes.

Threads: nnU-Net's CLIs call ``torch.set_num_threads(multiprocessing.cpu_count())`` for ``-device cpu``. Each CLI
is therefore started through its own console-script entry point by a two-line launcher that makes
``multiprocessing.cpu_count()`` return ``--threads`` first (same argv, same code path; nothing else changes), and
with ``nnUNet_n_proc_DA=0`` (augmentation in the main process; 1 for the planner, which needs >= 1), ``nnUNet_compile=f``, ``OMP_NUM_THREADS``.

Needs the ``bench`` extra (``pip install -e .[bench]``, i.e. ``nnunetv2``).

Usage::

    python bench/nnunet_baseline.py --data DIR --split SPLIT.json --work WORK_DIR \\
        [--trainer nnUNetTrainer_5epochs] [--fold all] [--dataset-id 901] [--threads 1]

Writes ``WORK_DIR/result.json`` (per-class Dice, epochs, steps, seconds, trainer) and prints the Dice table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: nnU-Net's 2-D configuration.
CONFIGURATION = "2d"
#: nnU-Net's default plans identifier (the plain-convolution U-Net planner).
PLANS = "nnUNetPlans"
#: spacing written for the (length-1) through-plane axis: the slices are independent 2-D cases and nnU-Net never
#: resamples along it (its own 2-D natural-image reader uses the same value).
THROUGH_PLANE_MM = 999.0
STAGES = ("write", "plan", "train", "predict", "score")
#: this project's extra nnU-Net trainers (the short lengths without mirroring), found by nnU-Net through
#: ``nnUNet_extTrainer``.
TRAINERS = Path(__file__).resolve().parent / "nnunet_trainers"

# Starts an nnU-Net console script by name (argv[1]) with multiprocessing.cpu_count() capped (nnU-Net sets
# torch's thread count from it for -device cpu).
_LAUNCHER = (
    "import multiprocessing, os, sys; from importlib.metadata import entry_points; "
    "n = int(os.environ['SALT_SEG_NNUNET_THREADS']); multiprocessing.cpu_count = lambda: n; "
    "(ep,) = entry_points(group='console_scripts', name=sys.argv[1]); sys.argv = sys.argv[1:]; "
    "sys.exit(ep.load()())"
)


# --------------------------------------------------------------------------------------------- 2-D case writer
def case_name(prefix: str, k: int) -> str:
    """nnU-Net case identifier of the ``k``-th written slice (``case_000``, ``test_012``...)."""
    return f"{prefix}_{k:03d}"


def slice_affine(spacing_mm: Sequence[float], through_plane_mm: float = THROUGH_PLANE_MM) -> np.ndarray:
    """Affine of an ``H x W x 1`` case: pixel spacing ``(H, W)`` in mm, the through-plane axis last."""
    return np.diag([float(spacing_mm[0]), float(spacing_mm[1]), float(through_plane_mm), 1.0])


def write_slice_case(
    images_dir: Path,
    labels_dir: Path | None,
    name: str,
    channels: Sequence[np.ndarray],
    label: np.ndarray | None,
    spacing_mm: Sequence[float],
) -> None:
    """Write one 2-D case: ``images_dir/<name>_000C.nii.gz`` (``H x W x 1`` float32 per channel) and, with
    ``labels_dir``, ``labels_dir/<name>.nii.gz`` (``H x W x 1`` uint8/int16)."""
    import nibabel as nib

    affine = slice_affine(spacing_mm)
    images_dir.mkdir(parents=True, exist_ok=True)
    for c, img in enumerate(channels):
        img = np.asarray(img, dtype=np.float32)
        if img.ndim != 2:
            raise ValueError(f"{name}: channel {c} is not a 2-D slice (shape {img.shape})")
        nib.save(nib.Nifti1Image(img[:, :, None], affine), str(images_dir / f"{name}_{c:04d}.nii.gz"))
    if labels_dir is not None:
        if label is None:
            raise ValueError(f"{name}: a label map is needed for a training case")
        lab = np.asarray(label)
        if lab.shape != np.asarray(channels[0]).shape:
            raise ValueError(f"{name}: label {lab.shape} and image {np.asarray(channels[0]).shape} differ")
        dtype = np.uint8 if lab.max(initial=0) <= 255 else np.int16
        labels_dir.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(lab.astype(dtype)[:, :, None], affine), str(labels_dir / f"{name}.nii.gz"))


def nnunet_dataset_json(
    classes: Mapping[int, str], channel_names: Sequence[str], n_training: int, name: str
) -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json``: channel names (``{"0": "T1"}``; ``CT`` selects CT normalisation), labels
    ``{"background": 0, name: id}`` in id order, case count and file ending."""
    labels: dict[str, int] = {"background": 0}
    for cid in sorted(int(c) for c in classes):
        if cid == 0:
            continue
        label_name = str(classes[cid]) or f"class_{cid}"
        if label_name in labels:
            label_name = f"{label_name}_{cid}"
        labels[label_name] = cid
    return {
        "name": name,
        "channel_names": {str(i): str(n) for i, n in enumerate(channel_names)},
        "labels": labels,
        "numTraining": int(n_training),
        "file_ending": ".nii.gz",
        "description": "salt_seg split slices written as 2-D cases (bench/nnunet_baseline.py)",
    }


def _slices_with_channels(dataset: Any, split: Any, part: str, n_channels: int) -> Iterable[tuple[Any, list]]:
    """``(LabelledSlice, [channel images])`` of a split part, read by ``iter_labelled_slices``."""
    from salt_seg.evaluation.labelled_slices import iter_labelled_slices

    iters = [
        iter_labelled_slices(dataset, axis=split.axis, split=split, part=part, images=True, channel=c)
        for c in range(n_channels)
    ]
    for per_channel in zip(*iters, strict=True):
        yield per_channel[0], [s.image for s in per_channel]


def write_split_cases(
    dataset: Any,
    split: Any,
    raw_dir: str | Path,
    *,
    include_val: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Write a split's slices as an nnU-Net v2 raw 2-D dataset.

    Training slices (and, with ``include_val``, validation slices) go to ``imagesTr``/``labelsTr`` as
    ``case_XXX``; test slices to ``imagesTs`` as ``test_XXX`` (their labels to ``labelsTs``, for reference).
    ``cases.json`` records which slice every case is.

    Args:
        dataset: a :class:`~salt_seg.data.dataset.Dataset`.
        split: a slice-level or volume-level :class:`~salt_seg.data.split.Split` (its axis is used).
        raw_dir: the ``DatasetXXX_Name`` folder to create (must not hold a ``dataset.json`` yet).
        include_val: also write the validation slices as training cases (for ``--fold 0``).
        name: ``dataset.json`` name (default: the dataset's).

    Returns:
        The manifest written to ``cases.json``: ``{"train": [...], "val": [...], "test": [...]}``, each entry
        ``{"name", "case", "slice", "shape", "spacing_mm"}``.
    """
    raw_dir = Path(raw_dir)
    if (raw_dir / "dataset.json").exists():
        raise FileExistsError(f"{raw_dir} already holds a dataset.json")
    n_channels = max(1, len(dataset.channel_names))
    manifest: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    k = 0
    parts = ("train", "val") if include_val else ("train",)
    for part in parts:
        for s, channels in _slices_with_channels(dataset, split, part, n_channels):
            nm = case_name("case", k)
            k += 1
            write_slice_case(raw_dir / "imagesTr", raw_dir / "labelsTr", nm, channels, s.label, s.spacing_mm)
            manifest[part].append(_entry(nm, s))
    if not manifest["train"]:
        raise ValueError("the split's train part has no slices")
    for t, (s, channels) in enumerate(_slices_with_channels(dataset, split, "test", n_channels)):
        nm = case_name("test", t)
        write_slice_case(raw_dir / "imagesTs", raw_dir / "labelsTs", nm, channels, s.label, s.spacing_mm)
        manifest["test"].append(_entry(nm, s))
    channel_names = list(dataset.channel_names)[:n_channels] or ["image"]
    doc = nnunet_dataset_json(dataset.classes, channel_names, k, name or dataset.name)
    (raw_dir / "dataset.json").write_text(json.dumps(doc, indent=1))
    (raw_dir / "cases.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _entry(name: str, s: Any) -> dict[str, Any]:
    return {
        "name": name,
        "case": s.case_id,
        "slice": int(s.index),
        "shape": list(s.label.shape),
        "spacing_mm": list(s.spacing_mm),
    }


def write_fold0_split(preprocessed_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """``splits_final.json`` whose fold 0 trains on the training slices and validates on the validation ones."""
    fold0 = {"train": [e["name"] for e in manifest["train"]], "val": [e["name"] for e in manifest["val"]]}
    if not fold0["val"]:
        raise ValueError("--fold 0 needs validation slices in the split")
    path = Path(preprocessed_dir) / "splits_final.json"
    path.write_text(json.dumps([fold0], indent=1))
    return path


# ------------------------------------------------------------------------------------------------ nnU-Net CLI
def nnunet_env(work: Path, threads: int, n_proc_da: int = 0) -> dict[str, str]:
    """Environment of the nnU-Net CLIs: its three folders under ``work``, ``threads`` threads and
    ``n_proc_da`` augmentation workers (0: in the main process; the planner needs >= 1, it sets torch's thread
    count from it while it sizes the network)."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        nnUNet_n_proc_DA=str(n_proc_da),
        nnUNet_compile="f",
        nnUNet_def_n_proc="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        SALT_SEG_NNUNET_THREADS=str(threads),
        nnUNet_extTrainer=str(TRAINERS),
    )
    return env


def run_cli(name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> float:
    """Run the nnU-Net console script ``name`` with ``args`` (output to ``log_path`` and, tailed, stdout).

    Returns:
        Wall-clock seconds.

    Raises:
        RuntimeError: non-zero exit (with the log's last lines).
    """
    cmd = [sys.executable, "-c", _LAUNCHER, name, *map(str, args)]
    print("$", name, " ".join(map(str, args)), flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if _worth_echoing(line):
                print("   ", line.rstrip(), flush=True)
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{name} exited with {rc} after {seconds:.0f} s; log {log_path}:\n{tail}")
    return seconds


def _worth_echoing(line: str) -> bool:
    keys = ("Epoch ", "Epoch time", "train_loss", "val_loss", "Pseudo dice", "Error", "Mean Validation Dice")
    return any(k in line for k in keys)


# ------------------------------------------------------------------------------------------------ scoring
def score_predictions(
    manifest: Mapping[str, Any], labels_dir: Path, pred_dir: Path, class_ids: Sequence[int]
) -> tuple[list[Any], dict]:
    """Score every test case's prediction against its label, per slice and class (module docstring).

    Returns:
        ``(scores, summary)``: the per-slice :class:`~salt_seg.evaluation.metrics.Score` s (case = the volume's
        case id, slice index = the slice in the volume) and :func:`~salt_seg.evaluation.summary.aggregate`'s
        summary.
    """
    import nibabel as nib

    from salt_seg.evaluation.metrics import evaluate_slices
    from salt_seg.evaluation.summary import aggregate

    scores = []
    for e in manifest["test"]:
        gt = np.asarray(nib.load(str(labels_dir / f"{e['name']}.nii.gz")).dataobj)[:, :, 0]
        pred_path = pred_dir / f"{e['name']}.nii.gz"
        if not pred_path.exists():
            raise FileNotFoundError(f"no prediction {pred_path}")
        pred = np.asarray(nib.load(str(pred_path)).dataobj)
        pred = pred.reshape(pred.shape[:2]) if pred.ndim == 3 else pred
        if pred.shape != gt.shape:
            raise ValueError(f"{e['name']}: prediction {pred.shape} but label {gt.shape}")
        scores.extend(
            evaluate_slices(
                [pred.astype(np.int64)],
                [gt.astype(np.int64)],
                e["spacing_mm"],
                list(class_ids),
                case=e["case"],
                slice_indices=[e["slice"]],
            )
        )
    return scores, aggregate(scores).get("slice", {})


def per_class_table(summary: Mapping[str, Any], classes: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    """``{class id: {"name", "dice": {mean, std, n}, "counts"}}`` (plus ``"all"``) from a slice summary."""
    empty = {"mean": float("nan"), "std": float("nan"), "n": 0}
    out: dict[str, dict[str, Any]] = {}
    for cid in sorted(int(c) for c in classes if int(c) != 0):
        node = summary.get(str(cid), {})
        out[str(cid)] = {
            "name": classes[cid],
            "dice": dict(node.get("dice", empty)),
            "counts": dict(node.get("counts", {})),
        }
    if "all" in summary:
        out["all"] = {"name": "all", "dice": dict(summary["all"]["dice"]), "counts": summary["all"]["counts"]}
    return out


def format_dice(table: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"{'class':<16} {'Dice mean':>9} {'± std':>7} {'n':>4}"]
    for row in table.values():
        d = row["dice"]
        lines.append(f"{row['name']:<16} {d['mean']:>9.3f} {d['std']:>7.3f} {d['n']:>4d}")
    return "\n".join(lines)


def training_facts(fold_dir: Path) -> dict[str, Any]:
    """Epochs, iterations, batch and patch size, per-epoch losses / pseudo Dice / seconds of a finished run."""
    facts: dict[str, Any] = {}
    debug = fold_dir / "debug.json"
    if debug.exists():
        d = json.loads(debug.read_text())
        for k in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "batch_size"):
            if k in d:
                try:
                    facts[k] = int(d[k])
                except ValueError:
                    facts[k] = d[k]
        for k in ("initial_lr", "weight_decay", "oversample_foreground_percent"):
            if k in d:
                facts[k] = float(d[k])
    ckpt = fold_dir / "checkpoint_final.pth"
    if ckpt.exists():
        import torch

        c = torch.load(str(ckpt), map_location="cpu", weights_only=False)
        facts["epochs_trained"] = int(c.get("current_epoch", 0))
        log = c.get("logging", {})
        start, end = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
        facts["per_epoch"] = {
            "train_loss": [float(x) for x in log.get("train_losses", [])],
            "val_loss": [float(x) for x in log.get("val_losses", [])],
            "pseudo_dice": [float(x) for x in log.get("mean_fg_dice", [])],
            "pseudo_dice_per_class": [[float(v) for v in x] for x in log.get("dice_per_class_or_region", [])],
            "seconds": [_seconds(b, a) for a, b in zip(start, end, strict=False)],
        }
        if "num_iterations_per_epoch" in facts:
            facts["steps"] = facts["epochs_trained"] * facts["num_iterations_per_epoch"]
    return facts


def _seconds(end: Any, start: Any) -> float:
    try:
        return float(end - start)
    except TypeError:
        return float((end - start).total_seconds())


def plans_facts(preprocessed_dir: Path) -> dict[str, Any]:
    plans_path = preprocessed_dir / f"{PLANS}.json"
    if not plans_path.exists():
        return {}
    cfg = json.loads(plans_path.read_text())["configurations"].get(CONFIGURATION, {})
    return {
        "patch_size": cfg.get("patch_size"),
        "plans_batch_size": cfg.get("batch_size"),
        "spacing": cfg.get("spacing"),
        "normalization": cfg.get("normalization_schemes"),
    }


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset folder (salt_seg.data.load_dataset)")
    ap.add_argument("--split", required=True, help="split JSON (salt-seg data split)")
    ap.add_argument("--work", required=True, help="working folder (nnU-Net raw/preprocessed/results inside)")
    ap.add_argument("--trainer", default="nnUNetTrainer_5epochs", help="nnU-Net trainer class (-tr)")
    ap.add_argument("--fold", default="all", choices=["all", "0"], help="'all' or '0' (module docstring)")
    ap.add_argument("--dataset-id", type=int, default=901, help="nnU-Net dataset id (local to --work)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of the nnU-Net processes")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    ap.add_argument("--disable-tta", action="store_true", help="predict without mirroring (faster)")
    ap.add_argument(
        "--mirroring",
        default="auto",
        choices=["auto", "on", "off"],
        help="nnU-Net's mirroring in training and TTA; 'off' trains TRAINER_NoMirroring "
        "(bench/nnunet_trainers); 'auto': off where the class names pair left/right (hippocampus_L/_R), "
        "since a mirror shows the left structure on the right under the left label",
    )
    ap.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)}; a later run in the same --work continues",
    )
    ap.add_argument("--out", default=None, help="result JSON (default WORK/result.json)")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        ap.error(f"unknown stage(s) {bad}; valid: {list(STAGES)}")

    from salt_seg.data import load_dataset, load_split
    from salt_seg.data.laterality import mirror_pairs

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data)
    split = load_split(args.split)
    pairs = mirror_pairs(ds.classes or {})
    mirroring = args.mirroring == "on" or (args.mirroring == "auto" and not pairs)
    if not mirroring and not args.trainer.endswith("_NoMirroring"):
        args.trainer = f"{args.trainer}_NoMirroring"
    if not mirroring:
        print(f"mirroring off ({len(pairs)} left/right class pairs): trainer {args.trainer}", flush=True)
    slug = "".join(ch if ch.isalnum() else "_" for ch in ds.name)[:40] or "slices"
    dataset_name = f"Dataset{args.dataset_id:03d}_{slug}"
    raw_dir = work / "nnUNet_raw" / dataset_name
    pre_dir = work / "nnUNet_preprocessed" / dataset_name
    fold_dir = work / "nnUNet_results" / dataset_name / f"{args.trainer}__{PLANS}__{CONFIGURATION}"
    fold_dir = fold_dir / f"fold_{args.fold}"
    pred_dir = work / "predictions" / f"{args.trainer}_fold{args.fold}"
    logs = work / "logs"
    env = nnunet_env(work, args.threads)
    seconds: dict[str, float] = {}
    result_path = Path(args.out) if args.out else work / "result.json"
    previous = json.loads(result_path.read_text()) if result_path.exists() else {}
    seconds.update(previous.get("seconds", {}))

    if "write" in stages:
        if raw_dir.exists():
            shutil.rmtree(raw_dir)
        t0 = time.perf_counter()
        manifest = write_split_cases(ds, split, raw_dir, include_val=args.fold == "0", name=ds.name)
        seconds["write"] = time.perf_counter() - t0
        print(
            f"wrote {raw_dir}: {len(manifest['train'])} train, {len(manifest['val'])} val, "
            f"{len(manifest['test'])} test slices as 2-D cases",
            flush=True,
        )
    manifest = json.loads((raw_dir / "cases.json").read_text())

    if "plan" in stages:
        if pre_dir.exists():
            shutil.rmtree(pre_dir)
        seconds["plan_preprocess"] = run_cli(
            "nnUNetv2_plan_and_preprocess",
            ["-d", args.dataset_id, "-c", CONFIGURATION, "--verify_dataset_integrity", "-npfp", 1, "-np", 1],
            nnunet_env(work, args.threads, n_proc_da=1),
            logs / "plan_and_preprocess.log",
        )
        if args.fold == "0":
            write_fold0_split(pre_dir, manifest)

    if "train" in stages:
        if fold_dir.exists():
            shutil.rmtree(fold_dir)
        seconds["train"] = run_cli(
            "nnUNetv2_train",
            [args.dataset_id, CONFIGURATION, args.fold, "-tr", args.trainer, "-device", args.device],
            env,
            logs / f"train_{args.trainer}_fold{args.fold}.log",
        )

    if "predict" in stages:
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        extra = ["--disable_tta"] if args.disable_tta else []
        seconds["predict"] = run_cli(
            "nnUNetv2_predict",
            [
                "-i",
                raw_dir / "imagesTs",
                "-o",
                pred_dir,
                "-d",
                args.dataset_id,
                "-c",
                CONFIGURATION,
                "-f",
                args.fold,
                "-tr",
                args.trainer,
                "-device",
                args.device,
                "-npp",
                1,
                "-nps",
                1,
                "--disable_progress_bar",
                *extra,
            ],  # fmt: skip
            env,
            logs / f"predict_{args.trainer}_fold{args.fold}.log",
        )

    result: dict[str, Any] = {
        "method": "nnunetv2",
        "nnunetv2_version": _version("nnunetv2"),
        "torch_version": _version("torch"),
        "data": str(Path(args.data).resolve()),
        "split": str(Path(args.split).resolve()),
        "split_protocol": getattr(split, "protocol", None),
        "shots": split.shots,
        "seed": split.seed,
        "axis": split.axis,
        "trainer": args.trainer,
        "mirroring": mirroring,
        "configuration": CONFIGURATION,
        "plans": PLANS,
        "fold": args.fold,
        "device": args.device,
        "threads": args.threads,
        "tta": mirroring and not args.disable_tta,  # no mirror axes: nothing to test-time augment
        "checkpoint": "checkpoint_final.pth",
        "n_train_slices": len(manifest["train"]),
        "n_val_slices": len(manifest["val"]),
        "n_test_slices": len(manifest["test"]),
        **plans_facts(pre_dir),
        **training_facts(fold_dir),
    }
    if "score" in stages:
        t0 = time.perf_counter()
        class_ids = sorted(int(c) for c in ds.classes if int(c) != 0)
        scores, summary = score_predictions(manifest, raw_dir / "labelsTs", pred_dir, class_ids)
        seconds["score"] = time.perf_counter() - t0
        table = per_class_table(summary, ds.classes)
        result["per_class"] = table
        result["per_slice"] = [
            {"case": s.case, "slice": s.slice_index, "class": s.class_id, "status": s.status, "dice": s.dice}
            for s in scores
        ]
        print(format_dice(table))
    seconds["total"] = sum(v for k, v in seconds.items() if k != "total")
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    result_path.write_text(json.dumps(_json_safe(result), indent=1))
    print(
        json.dumps(
            {
                "out": str(result_path),
                "trainer": args.trainer,
                "epochs": result.get("epochs_trained"),
                "steps": result.get("steps"),
                "batch_size": result.get("batch_size"),
                "patch_size": result.get("patch_size"),
                "seconds": result["seconds"],
            }
        )
    )
    return result


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


if __name__ == "__main__":
    main()
