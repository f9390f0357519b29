"""``salt-seg data``: check, prepare and split datasets.

* ``salt-seg data check DIR [--format auto]``: index and read every case with all input checks, print a summary
  (cases, shapes, spacings, label voxel counts, problems); exit 1 when problems are found. Writes nothing.
* ``salt-seg data prepare NAME --out DIR``: build a dataset recipe (``mni152-tissue``, ``colin27-aal``,
  ``synthetic-shapes``) in nnU-Net v2 layout; built in a temporary folder and renamed when valid, so a failure
  writes nothing.
* ``salt-seg data split DIR --shots N --out FILE [--level slice|volume] [--protocol block|sparse]``: draw a
  few-shot split JSON; slices by default, as ``train`` (``data.holdout: slices``).
* ``salt-seg data ceiling DIR --image-size N [--grid G] [--split FILE --part test]``: the resolution ceiling, the
  Dice a perfect prediction on the model's logit grid can reach, per class (at ``G``, default ``N // 4``, and at
  full resolution ``N``).
* ``salt-seg data floor DIR --split FILE [--kind nearest_mean|gaussian]``: the intensity floor, Dice of a
  per-pixel intensity classifier fitted on the split's training slices, on its test slices.
* ``salt-seg data list``: the dataset formats and recipes.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

HELP = "check, prepare and split datasets, and measure their ceiling and floor (formats: nnunet, msd, ...)"
DESCRIPTION = (
    "Validate a dataset folder, build a ready-to-train dataset from data that installs offline, or draw a "
    "few-shot split. Run 'salt-seg data SUBCOMMAND --help' for details."
)
_FORMATS = ("auto", "nnunet", "msd", "salt", "dicom", "pairs")  # kept in sync with DATASET_FORMATS (tested)
_RECIPES = ("mni152-tissue", "colin27-aal", "synthetic-shapes")  # kept in sync with RECIPES (tested)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    check = sub.add_parser("check", help="validate a dataset and print a summary (exit 1 on problems)")
    check.add_argument("dir", type=Path, help="dataset folder")
    check.add_argument("--format", default="auto", choices=_FORMATS, help="dataset layout (default: auto)")
    check.add_argument(
        "--max-voxels", type=int, default=None, help="refuse images with more voxels than this"
    )

    prep = sub.add_parser("prepare", help="build a dataset recipe into --out (nothing is written on failure)")
    prep.add_argument("name", choices=_RECIPES, help="recipe name")
    prep.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    prep.add_argument("--force", action="store_true", help="replace --out if it exists")
    prep.add_argument(
        "--seed", type=int, default=None, help="seed for the default split (and synthetic data)"
    )
    prep.add_argument("--shots", type=int, default=None, help="training slices/volumes in the default split")
    prep.add_argument("--source", type=Path, default=None, help="colin27-aal: folder with ch2/aal files")
    prep.add_argument("--no-install", action="store_true", help="colin27-aal: never run apt-get")

    split = sub.add_parser("split", help="draw a few-shot split JSON for a dataset")
    split.add_argument("dir", type=Path, help="dataset folder")
    split.add_argument("--out", type=Path, required=True, help="split file to write (.json)")
    split.add_argument("--format", default="auto", choices=_FORMATS, help="dataset layout (default: auto)")
    split.add_argument("--shots", type=int, required=True, help="training volumes (volume) or slices (slice)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument(
        "--level",
        default="slice",
        choices=("slice", "volume"),
        help="split unit: slices of each volume (default, as train's data.holdout: slices) or whole volumes",
    )
    split.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    split.add_argument("--test", type=float, default=0.4, help="test fraction (default 0.4)")
    split.add_argument("--guard-mm", type=float, default=10.0, help="slice level: min distance between parts")
    split.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice level: RAS axis")
    split.add_argument(
        "--protocol",
        default="block",
        choices=("block", "sparse"),
        help="slice level: contiguous train/val/test blocks (block, default) or training slices spread evenly "
        "with val/test in the gaps (sparse)",
    )
    split.add_argument("--force", action="store_true", help="replace --out if it exists")

    ceiling = sub.add_parser(
        "ceiling", help="per-class Dice a perfect prediction reaches on the model's logit grid"
    )
    ceiling.add_argument("dir", type=Path, help="dataset folder")
    ceiling.add_argument("--image-size", type=int, required=True, help="model input side in pixels")
    ceiling.add_argument(
        "--grid", type=int, default=None, help="logit grid side (default: image size // 4, SAM's decoder)"
    )
    ceiling.add_argument(
        "--split", type=Path, default=None, help="split JSON: measure only one part's slices"
    )
    ceiling.add_argument("--part", default="test", choices=("train", "val", "test"), help="split part")
    ceiling.add_argument(
        "--axis", type=int, default=None, choices=(0, 1, 2), help="RAS axis (default: split's, or 2)"
    )
    ceiling.add_argument(
        "--resize", default="longest", choices=("longest", "square"), help="input resize mode"
    )
    ceiling.add_argument("--format", default="auto", choices=_FORMATS, help="dataset layout (default: auto)")

    floor = sub.add_parser(
        "floor", help="per-class Dice of an intensity classifier fitted on a split's training slices"
    )
    floor.add_argument("dir", type=Path, help="dataset folder")
    floor.add_argument("--split", type=Path, required=True, help="split JSON (fit on train, score --part)")
    floor.add_argument(
        "--kind", default="nearest_mean", choices=("nearest_mean", "gaussian"), help="classifier"
    )
    floor.add_argument(
        "--part", default="test", choices=("train", "val", "test"), help="split part scored (default test)"
    )
    floor.add_argument("--format", default="auto", choices=_FORMATS, help="dataset layout (default: auto)")

    sub.add_parser("list", help="list dataset formats and recipes")


def run(args: argparse.Namespace) -> int:
    commands = {
        "check": _check,
        "prepare": _prepare,
        "split": _split,
        "ceiling": _ceiling,
        "floor": _floor,
        "list": _list,
    }
    return commands[args.data_command](args)


def _check(args: argparse.Namespace) -> int:
    from salt_seg.data.check import check_dataset, format_check_report
    from salt_seg.data.formats import load_dataset
    from salt_seg.data.readers import DEFAULT_MAX_VOXELS

    dataset = load_dataset(args.dir, args.format, strict=False)
    report = check_dataset(dataset, max_voxels=args.max_voxels or DEFAULT_MAX_VOXELS)
    print(format_check_report(report))
    return 0 if report.ok else 1


def _prepare(args: argparse.Namespace) -> int:
    from salt_seg.data.recipes import RECIPES, prepare_dataset

    given = {"seed": args.seed, "shots": args.shots, "source": args.source}
    if args.no_install:
        given["install"] = False
    options = {k: v for k, v in given.items() if v is not None}
    accepted = inspect.signature(RECIPES[args.name].build).parameters
    unused = [k for k in options if k not in accepted]
    if unused:
        flags = ", ".join("--no-install" if k == "install" else f"--{k}" for k in unused)
        raise ValueError(f"{flags} does not apply to recipe {args.name}")
    out = prepare_dataset(args.name, args.out, force=args.force, **options)
    print(f"prepared {args.name} at {out} (nnU-Net v2 layout; default split in {out / 'split.json'})")
    return 0


#: make_split's arguments as ``data split`` spells them, so that its errors and warnings name the flags
SPLIT_FLAGS = {
    "shots": "--shots",
    "seed": "--seed",
    "level": "--level",
    "val": "--val",
    "test": "--test",
    "guard_mm": "--guard-mm",
    "axis": "--axis",
    "protocol": "--protocol",
}


def _split(args: argparse.Namespace) -> int:
    from salt_seg.data.formats import load_dataset
    from salt_seg.data.split import SplitTerms, make_split, save_split

    if args.out.exists() and not args.force:
        raise FileExistsError(f"{args.out}: already exists; pass --force to replace it")
    if not args.out.parent.is_dir():
        raise FileNotFoundError(f"{args.out.parent}: no such folder for --out")
    dataset = load_dataset(args.dir, args.format)
    split = make_split(
        dataset,
        shots=args.shots,
        seed=args.seed,
        level=args.level,
        val=args.val,
        test=args.test,
        guard_mm=args.guard_mm,
        axis=args.axis,
        protocol=args.protocol,
        terms=SplitTerms(SPLIT_FLAGS, "{name} {value}"),
    )
    save_split(split, args.out)
    sizes = ", ".join(
        f"{p} {sum(len(e.slices) if e.slices else 1 for e in split.part(p))}"
        for p in ("train", "val", "test")
    )
    unit = "slices" if args.level == "slice" else "cases"
    protocol = f", {args.protocol} protocol" if args.level == "slice" else ""
    print(f"wrote {args.out}: {sizes} {unit} (seed {args.seed}{protocol})")
    return 0


def _table(rows: list[list[str]]) -> str:
    """Plain-text columns: the first left-aligned, the rest right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _read_split(path: Path | None):  # -> Split | None
    from salt_seg.data.split import load_split

    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such split file")
    return load_split(path)


def _ceiling(args: argparse.Namespace) -> int:
    from salt_seg.data.formats import load_dataset
    from salt_seg.evaluation.ceiling import dataset_ceiling

    grid = args.image_size // 4 if args.grid is None else args.grid
    if args.image_size < 1:
        raise ValueError(f"--image-size must be >= 1, got {args.image_size}")
    if not 1 <= grid <= args.image_size:
        raise ValueError(f"--grid must be in 1..--image-size ({args.image_size}), got {grid}")
    split = _read_split(args.split)
    axis = args.axis if args.axis is not None else (split.axis if split is not None else 2)
    dataset = load_dataset(args.dir, args.format)
    grids = list(dict.fromkeys([grid, args.image_size]))
    summary, n = dataset_ceiling(
        dataset, args.image_size, grids, axis=axis, split=split, part=args.part, resize=args.resize
    )
    where = f"{args.part} part of {args.split}" if split is not None else "every labelled slice"
    print(
        f"resolution ceiling of {dataset.name}: {n} slices ({where}), axis {axis}, input {args.image_size} px"
    )
    rows = [["class", *(f"Dice@{g}x{g}" for g in grids), "n slices"]]
    for c, name in sorted(dataset.classes.items()):
        stats = [summary[g][c] for g in grids]
        cells = ["-" if s["n"] == 0 else f"{s['mean']:.3f}" for s in stats]
        rows.append([f"{c} {name}", *cells, str(stats[0]["n"])])
    print(_table(rows))
    return 0


def _floor(args: argparse.Namespace) -> int:
    from salt_seg.data.formats import load_dataset
    from salt_seg.evaluation.floors import intensity_floor

    split = _read_split(args.split)
    dataset = load_dataset(args.dir, args.format)
    result = intensity_floor(dataset, split, args.kind, part=args.part)
    print(
        f"intensity floor ({args.kind}) of {dataset.name}: fitted on {result.n_train_slices} training "
        f"slices, scored on {result.n_test_slices} {args.part} slices"
    )
    rows = [["class", "Dice", "n"]]
    for c, name in sorted(dataset.classes.items()):
        s = result.per_class[c]
        dice = "-" if s["n"] == 0 else f"{s['mean']:.3f}" + ("" if s["n"] < 2 else f" ± {s['std']:.3f}")
        rows.append([f"{c} {name}", dice, str(s["n"])])
    print(_table(rows))
    return 0


def _list(args: argparse.Namespace) -> int:
    from salt_seg.data.formats import DATASET_FORMATS
    from salt_seg.data.recipes import RECIPES

    print("dataset formats (--format):")
    for f in DATASET_FORMATS.values():
        print(f"  {f.name:<18} {f.description}")
    print("recipes (salt-seg data prepare NAME --out DIR):")
    for r in RECIPES.values():
        print(f"  {r.name:<18} {r.description}")
    return 0
