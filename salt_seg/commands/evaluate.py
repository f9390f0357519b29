"""``salt-seg evaluate --pred DIR --gt DIR``: Dice, HD95 (mm) and NSD of predicted NIfTI masks vs ground truth.

Thin on purpose: parsing and printing here; pairing/reading in :mod:`salt_seg.evaluation.files`, scores in
:mod:`salt_seg.evaluation.metrics`, orchestration and output files in :mod:`salt_seg.evaluation.runner` (which a
``--model RUN_DIR`` mode can feed with predicted arrays through ``evaluate_cases``).
"""

from __future__ import annotations

import argparse

from salt_seg.commands.common import add_precision_flag, add_runtime_flags

HELP = "score predicted masks against ground truth: Dice, HD95 (mm), NSD per class, per volume and per slice"
DESCRIPTION = (
    "Compare a folder of predicted NIfTI label maps with a folder of ground truth, matched by file name "
    "(case.nii.gz). Scores Dice, HD95 in mm (voxel spacing honoured) and normalised surface Dice at a tolerance "
    "in mm, per class, per case, per 3-D volume and per 2-D slice. Empty masks: both empty = excluded from means "
    "and counted (or --both-empty perfect); one empty = Dice 0, NSD 0, HD95 = field-of-view diagonal. Writes "
    "evaluation.json and CSV tables to --out and prints a table."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", metavar="DIR", help="folder of predicted label maps (.nii.gz)")
    parser.add_argument("--gt", metavar="DIR", help="folder of ground-truth label maps (.nii.gz)")
    parser.add_argument(
        "--model",
        metavar="RUN_DIR",
        help="instead of --pred/--gt: predict the test part of this run's split and score it",
    )
    parser.add_argument(
        "--prompt",
        choices=("auto", "box", "point"),
        default=None,
        help="with --model: class tokens (auto) or box/point prompts simulated from the ground truth "
        "(default: auto when the model has class tokens, else box)",
    )
    parser.add_argument("--data", metavar="DIR", help="with --model: the dataset (default: the run config's)")
    parser.add_argument(
        "--overlap",
        choices=("label_map", "independent"),
        default="label_map",
        help="with --model: score the exported multi-class label map (default) or each class's own mask "
        "against that class alone (the SALT paper's per-prompt protocol)",
    )
    parser.add_argument(
        "--part",
        choices=("test", "val", "train"),
        default="test",
        help="with --model: which part of the split to score (default test; train shows how well the model fits "
        "its own training slices). Results go to RUN/evaluation[_part][_prompt][_overlap] unless --out is given",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="with --model: test-time mirroring, each slice's probabilities averaged with those of its "
        "left-right mirror image (nnU-Net's default; twice the inference time)",
    )
    add_runtime_flags(parser)  # --device, --threads: used with --model
    add_precision_flag(parser)  # with --model
    parser.add_argument(
        "--split",
        metavar="FILE",
        help="salt_seg split JSON: score only its test part (a slice-level split: only its test slices)",
    )
    parser.add_argument(
        "--classes",
        metavar="LIST",
        help="label values or dataset.json names, e.g. 1,2 or liver,spleen (default: every non-zero label found)",
    )
    parser.add_argument(
        "--dataset-json", metavar="FILE", help="class names (default: dataset.json in --gt or its parent)"
    )
    parser.add_argument(
        "--nsd-tolerance", type=float, default=2.0, metavar="MM", help="NSD tolerance in mm (default 2.0)"
    )
    parser.add_argument(
        "--per-volume", action="store_true", help="score 3-D volumes (default: volumes and slices)"
    )
    parser.add_argument(
        "--per-slice", action="store_true", help="score 2-D slices (default: volumes and slices)"
    )
    parser.add_argument(
        "--slice-axis",
        type=int,
        default=None,
        choices=(0, 1, 2),
        help="voxel axis of the RAS-reoriented volume to slice along (default: the split's axis, else 2 = axial)",
    )
    parser.add_argument(
        "--both-empty",
        choices=("exclude", "perfect"),
        default="exclude",
        help="class absent from both masks: exclude from means and count (default) or score Dice 1, NSD 1, HD95 0",
    )
    parser.add_argument(
        "--missing",
        choices=("error", "empty"),
        default="error",
        help="a case without a prediction file: stop with an error (default) or score it as an empty prediction",
    )
    parser.add_argument("--out", metavar="DIR", help="where to write results (default: PRED/evaluation)")


def evaluation_folder(provenance: dict) -> str:
    """``evaluation[_part][_prompt][_overlap][_mirror]``: each mode its own folder, the defaults' folder plain.

    A box-prompt, train-part, independent-overlap or mirrored evaluation never overwrites the default one; the
    prompt is named only when it is not the model's default (``auto`` with class tokens, else ``box``).
    """
    p = provenance
    parts = [
        p["part"] if p["part"] != "test" else "",
        p["prompt"] if p["prompt"] != p["prompt_default"] else "",
        p["overlap"] if p["overlap"] != "label_map" else "",
        "mirror" if p.get("mirror") else "",
    ]
    return "evaluation" + "".join(f"_{v}" for v in parts if v)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from salt_seg.evaluation import EvaluationSettings, evaluate_folders, format_table, write_results
    from salt_seg.inference import InferenceSettings

    levels = tuple(lv for lv, on in (("volume", args.per_volume), ("slice", args.per_slice)) if on)
    try:
        settings = EvaluationSettings(
            nsd_tolerance_mm=args.nsd_tolerance,
            levels=levels or ("volume", "slice"),
            slice_axis=args.slice_axis,
            both_empty=args.both_empty,
        )
    except ValueError as exc:
        raise ValueError(f"--nsd-tolerance: {exc}") from None
    if args.model:
        if args.pred or args.gt:
            raise ValueError("use either --model RUN_DIR or --pred DIR --gt DIR, not both")
        from salt_seg.commands.common import resolve_device
        from salt_seg.evaluation.model_eval import evaluate_run

        result = evaluate_run(
            args.model,
            split_file=args.split,
            data_path=args.data,
            prompt=args.prompt,
            settings=settings,
            device=resolve_device(args.device, args.threads),
            overlap=args.overlap,
            part=args.part,
            inference=InferenceSettings(mirror=True) if args.mirror else None,
            precision=args.precision,
        )
        out = Path(args.out) if args.out else Path(args.model) / evaluation_folder(result.provenance)
        written = write_results(result, out)
        print(
            f"{len(result.cases)} {args.part} case(s) of {args.model}, classes "
            f"{', '.join(map(str, result.class_ids))}"
        )
        print(format_table(result.summary, result.class_names, settings.nsd_tolerance_mm))
        print(f"results: {out} ({', '.join(p.name for p in written)})")
        return 0
    if not (args.pred and args.gt):
        raise ValueError("give --pred DIR and --gt DIR (or --model RUN_DIR)")
    if args.precision != "fp32":
        raise ValueError("--precision applies to --model (prediction); --pred/--gt only score label maps")
    result = evaluate_folders(
        args.pred,
        args.gt,
        split_file=args.split,
        classes=args.classes,
        dataset_json=args.dataset_json,
        missing=args.missing,
        settings=settings,
    )
    out = Path(args.out) if args.out else Path(args.pred) / "evaluation"
    written = write_results(result, out)
    print(
        f"{len(result.cases)} case(s), classes {', '.join(map(str, result.class_ids)) or 'none'}"
        + (f", split {args.split}" if args.split else "")
        + (
            f", {len(result.missing_predictions)} missing prediction(s) scored as empty"
            if result.missing_predictions
            else ""
        )
    )
    n_sliced = sum(v is not None for v in result.split_slices.values())
    if n_sliced:
        print(f"{n_sliced} case(s) restricted to the split's test slices: scored per slice only")
    print(format_table(result.summary, result.class_names, settings.nsd_tolerance_mm))
    print(
        "n = scores in each mean; 'both empty' are excluded"
        if settings.both_empty == "exclude"
        else "n = scores in each mean; 'both empty' scored as Dice 1, NSD 1, HD95 0"
    )
    print("'missed'/'false pos' score Dice 0, NSD 0, HD95 = field-of-view diagonal")
    print(f"results: {out} ({', '.join(p.name for p in written)})")
    return 0
