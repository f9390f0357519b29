"""Dataset format registry: one reader per on-disk layout, and ``auto`` detection.

=========  ==========================================================================================
name       layout
=========  ==========================================================================================
nnunet     nnU-Net v2: ``dataset.json`` (``channel_names``, ``labels`` name->id, ``file_ending``),
           ``imagesTr/<case>_0000<ending>`` (one file per channel), ``labelsTr/<case><ending>``
msd        Medical Segmentation Decathlon: ``dataset.json`` (``labels`` id->name, ``modality``,
           ``training`` list), ``imagesTr/``, ``labelsTr/``; several modalities = one 4-D file
salt       SALT's layout: ``images/``, ``masks/`` (same file name, or ``<image>_mask``/``_seg``/``_gt``/...),
           ``data_split.csv`` (``imgs``, ``split``); 0/255 masks are read as 0/1
dicom      DICOM series with NIfTI labels: ``images/<case>/`` (a DICOM folder) or ``images/<case>.zip``,
           ``labels/<case>.nii.gz``
pairs      image/label pairs matched by name: ``images/`` + ``labels/`` (or ``masks/``), or one folder with
           ``<name>.<ext>`` next to ``<name>_label|_mask|_seg|_gt.<ext>``
=========  ==========================================================================================

``salt``, ``dicom`` and ``pairs`` read optional ``classes.json`` (``{"1": "vessel"}``); without it the dataset
has one class ``foreground``. ``dicom`` also reads optional ``series.json`` (``{"case": 0}``) to choose a series.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salt_seg.data.dataset import SPLIT_HINTS, Case, Dataset, parse_classes, read_json
from salt_seg.data.dicom_seg import dicom_modality, segment_names
from salt_seg.data.errors import DataError
from salt_seg.data.readers import IMAGE_SUFFIXES, NIFTI_SUFFIXES, strip_suffix
from salt_seg.data.rtstruct import roi_names

LABEL_SUFFIXES = ("_label", "_labels", "_mask", "_masks", "_seg", "_segmentation", "_gt")
_IMAGE_FILE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".zip")


@dataclass(frozen=True)
class DatasetFormat:
    """One on-disk layout: a cheap ``detect(root)`` test and a ``read(root, strict)`` indexer."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, bool], Dataset]


class _Problems:
    """Collects structural problems; raises the first one in strict mode."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.items: list[str] = []

    def add(self, path: Path, problem: str) -> None:
        if self.strict:
            raise DataError(path, problem)
        self.items.append(f"{path}: {problem}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(_IMAGE_FILE_SUFFIXES) and not p.name.startswith(".")
    )


def _split_hint(value: str) -> str | None:
    v = value.strip().lower()
    v = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}.get(v, v)
    return v if v in SPLIT_HINTS else None


def _optional_classes(root: Path) -> dict[int, str]:
    path = root / "classes.json"
    return parse_classes(read_json(path), path) if path.is_file() else {1: "foreground"}


# --- nnU-Net v2 -------------------------------------------------------------------------------------------------
def _dataset_json(root: Path) -> dict[str, Any] | None:
    """``root/dataset.json`` as a dict, or ``None`` where there is none or it does not parse (format detection)."""
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except DataError:
        return None


def _detect_nnunet(root: Path) -> bool:
    doc = _dataset_json(root)
    return doc is not None and ("channel_names" in doc or "file_ending" in doc)


def _read_nnunet(root: Path, strict: bool) -> Dataset:
    path = root / "dataset.json"
    doc = read_json(path)
    problems = _Problems(strict)
    for key in ("channel_names", "labels", "file_ending"):
        if key not in doc:
            raise DataError(path, f"nnU-Net dataset.json lacks {key!r}")
    classes = parse_classes(doc["labels"], path, name_to_id=True)
    try:
        channels = {int(k): str(v) for k, v in doc["channel_names"].items()}
    except (AttributeError, ValueError):
        raise DataError(path, "'channel_names' must map channel numbers to names") from None
    if sorted(channels) != list(range(len(channels))):
        raise DataError(path, f"'channel_names' must number channels 0..N-1, got {sorted(channels)}")
    ending = str(doc["file_ending"])
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(root, "nnU-Net dataset has no imagesTr/ folder")
    by_case: dict[str, dict[int, Path]] = {}
    for p in sorted(images_dir.iterdir()):
        if not p.name.endswith(ending) or p.name.startswith("."):
            continue
        stem = p.name[: -len(ending)]
        base, _, num = stem.rpartition("_")
        if not base or len(num) != 4 or not num.isdigit():
            problems.add(p, f"image name must end in _XXXX{ending} (channel number)")
            continue
        by_case.setdefault(base, {})[int(num)] = p
    cases = []
    for case_id, files in sorted(by_case.items()):
        missing = [c for c in channels if c not in files]
        if missing:
            problems.add(images_dir, f"case {case_id} lacks channel file(s) {missing}")
            continue
        label_file = labels_dir / f"{case_id}{ending}"
        label: Path | None = label_file
        if not label_file.is_file():
            problems.add(label_file, f"label for case {case_id} is missing")
            label = None
        cases.append(Case(case_id, [files[c] for c in sorted(channels)], label))
    if not cases:
        raise DataError(images_dir, f"no cases found (expected <case>_0000{ending})")
    n = doc.get("numTraining")
    if isinstance(n, int) and n != len(cases):
        problems.add(path, f"numTraining is {n} but {len(cases)} complete cases were found")
    meta: dict[str, Any] = {
        k: doc[k] for k in ("description", "reference", "licence", "license", "release") if k in doc
    }
    return Dataset(
        root,
        "nnunet",
        cases,
        classes,
        [channels[c] for c in sorted(channels)],
        name=str(doc.get("name", root.name)),
        problems=problems.items,
        meta=meta,
    )


# --- Medical Segmentation Decathlon ---------------------------------------------------------------------------------
def _detect_msd(root: Path) -> bool:
    doc = _dataset_json(root)
    return doc is not None and ("training" in doc or "modality" in doc)


def _read_msd(root: Path, strict: bool) -> Dataset:
    path = root / "dataset.json"
    doc = read_json(path)
    problems = _Problems(strict)
    if "labels" not in doc or "training" not in doc:
        raise DataError(path, "MSD dataset.json needs 'labels' and 'training'")
    classes = parse_classes(doc["labels"], path)
    modality = doc.get("modality", {"0": "image"})
    try:
        channel_names = [str(modality[k]) for k in sorted(modality, key=int)]
    except (TypeError, ValueError, AttributeError):
        raise DataError(path, "'modality' must map channel numbers to names") from None
    cases = []
    for i, item in enumerate(doc["training"]):
        if not isinstance(item, dict) or "image" not in item:
            raise DataError(path, f"training entry #{i} needs an 'image' path")
        image = (root / item["image"]).resolve()
        label = (root / item["label"]).resolve() if item.get("label") else None
        if not image.is_file():
            problems.add(image, f"image of training entry #{i} is missing")
            continue
        if label is not None and not label.is_file():
            problems.add(label, f"label of training entry #{i} is missing")
            label = None
        cases.append(Case(strip_suffix(image.name), [image], label))
    if not cases:
        raise DataError(path, "no usable training cases")
    n = doc.get("numTraining")
    if isinstance(n, int) and n != len(doc["training"]):
        problems.add(path, f"numTraining is {n} but 'training' lists {len(doc['training'])} cases")
    meta: dict[str, Any] = {
        k: doc[k] for k in ("description", "reference", "licence", "license", "release") if k in doc
    }
    return Dataset(
        root,
        "msd",
        cases,
        classes,
        channel_names,
        name=str(doc.get("name", root.name)),
        multichannel=len(channel_names) > 1,
        problems=problems.items,
        meta=meta,
    )


# --- SALT (images/, masks/, data_split.csv) ---------------------------------------------------------------------------
def _detect_salt(root: Path) -> bool:
    return (root / "data_split.csv").is_file() and (root / "images").is_dir() and (root / "masks").is_dir()


def _match_label(folder: Path, image: Path, problems: _Problems | None = None) -> Path | None:
    """The mask of ``image`` in ``folder``: the same name, the same stem with another extension, or the stem plus
    a mask suffix (``<image>_mask.png``, ``_label``, ``_seg``, ``_segmentation``, ``_gt``; any case), the
    namings SALT-style datasets use. Several candidates are a problem (reported), not a guess."""
    exact = folder / image.name
    if exact.is_file():
        return exact
    stem = strip_suffix(image.name).lower()
    wanted = {stem} | {stem + suffix for suffix in LABEL_SUFFIXES}
    found = [p for p in _image_files(folder) if strip_suffix(p.name).lower() in wanted]
    if len(found) > 1 and problems is not None:
        problems.add(folder, f"several masks for image {image.name}: {', '.join(p.name for p in found)}")
    return found[0] if len(found) == 1 else None


def _no_mask(image: Path) -> str:
    stem = strip_suffix(image.name)
    return f"no mask for image {image.name} (looked for {image.name}, {stem}.*, {stem}_mask.* and the like)"


def _read_salt(root: Path, strict: bool) -> Dataset:
    csv_path = root / "data_split.csv"
    problems = _Problems(strict)
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(csv_path, f"unreadable CSV ({exc})") from None
    if not rows or not {"imgs", "split"} <= set(rows[0]):
        raise DataError(csv_path, "data_split.csv needs the columns 'imgs' and 'split'")
    cases = []
    for i, row in enumerate(rows, start=2):
        rel = (row.get("imgs") or "").strip()
        image = root / "images" / Path(rel).name if not (root / rel).is_file() else root / rel
        if not image.is_file():
            problems.add(csv_path, f"line {i}: image {rel!r} not found in images/")
            continue
        split = _split_hint(row.get("split") or "")
        if split is None:
            problems.add(csv_path, f"line {i}: split {row.get('split')!r} is not train, val or test")
        label = _match_label(root / "masks", image, problems)
        if label is None:
            problems.add(root / "masks", _no_mask(image))
        cases.append(Case(strip_suffix(image.name), [image], label, split=split))
    if not cases:
        raise DataError(csv_path, "no usable rows")
    classes = _optional_classes(root)
    remap = {255: 1} if list(classes) == [1] else None
    return Dataset(root, "salt", cases, classes, ["R", "G", "B"], label_remap=remap, problems=problems.items)


#: label files of a DICOM case besides NIfTI: a DICOM Segmentation or RT Structure Set of its series (salt_seg's
#: own output names first)
DICOM_SEG_SUFFIXES = (".seg.dcm", ".rtstruct.dcm", ".dcm")


# --- DICOM series + NIfTI labels ----------------------------------------------------------------------------------------
def _detect_dicom(root: Path) -> bool:
    images, labels = root / "images", root / "labels"
    if not (images.is_dir() and labels.is_dir()):
        return False
    return any(p.is_dir() or p.suffix.lower() == ".zip" for p in images.iterdir())


def _read_dicom(root: Path, strict: bool) -> Dataset:
    images, labels = root / "images", root / "labels"
    problems = _Problems(strict)
    series_path = root / "series.json"
    series = read_json(series_path) if series_path.is_file() else {}
    cases = []
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or not (p.is_dir() or p.suffix.lower() == ".zip"):
            continue
        case_id = p.stem if p.suffix.lower() == ".zip" else p.name
        label = next(
            (
                labels / f"{case_id}{s}"
                for s in (*NIFTI_SUFFIXES, *DICOM_SEG_SUFFIXES)
                if (labels / f"{case_id}{s}").is_file()
            ),
            None,
        )
        if label is None:
            problems.add(labels, f"no NIfTI, DICOM-SEG or RTSTRUCT label for case {case_id}")
        cases.append(Case(case_id, [p], label, series=series.get(case_id)))
    if not cases:
        raise DataError(images, "no DICOM case folders or zips found")
    classes = _optional_classes(root)
    if not (root / "classes.json").is_file():  # no declared classes: the DICOM-SEG labels' segment names
        classes = _segment_classes([c.label for c in cases if c.label is not None]) or classes
    return Dataset(root, "dicom", cases, classes, ["image"], problems=problems.items)


def _segment_classes(labels: list[Path]) -> dict[int, str]:
    """Label value -> segment (DICOM-SEG) or ROI (RTSTRUCT, values 1, 2, ... in file order) name over the DICOM
    label files (the first name of a value wins)."""

    names: dict[int, str] = {}
    for path in labels:
        if path.suffix.lower() != ".dcm":
            continue
        modality = dicom_modality(path)
        found: dict[int, str] = {}
        if modality == "SEG":
            found = segment_names(path)
        elif modality == "RTSTRUCT":
            found = roi_names(path)
        for value, name in found.items():
            names.setdefault(value, name)
    return dict(sorted(names.items()))


# --- image/label pairs -----------------------------------------------------------------------------------------------------
def _pair_folders(root: Path) -> tuple[Path, Path] | None:
    for lab in ("labels", "masks"):
        if (root / "images").is_dir() and (root / lab).is_dir():
            return root / "images", root / lab
    return None


def _detect_pairs(root: Path) -> bool:
    if _pair_folders(root):
        return True
    return any(strip_suffix(p.name).lower().endswith(LABEL_SUFFIXES) for p in _image_files(root))


def _read_pairs(root: Path, strict: bool) -> Dataset:
    problems = _Problems(strict)
    folders = _pair_folders(root)
    cases = []
    if folders:
        images, labels = folders
        for image in _image_files(images):
            label = _match_label(labels, image, problems)
            if label is None:
                problems.add(labels, f"no label for image {image.name}")
            cases.append(Case(strip_suffix(image.name), [image], label))
    else:
        files = _image_files(root)
        label_of: dict[str, Path] = {}
        for p in files:
            stem = strip_suffix(p.name)
            for suffix in LABEL_SUFFIXES:
                if stem.lower().endswith(suffix):
                    label_of[stem[: -len(suffix)]] = p
        for p in files:
            stem = strip_suffix(p.name)
            if p in label_of.values():
                continue
            if stem not in label_of:
                problems.add(p, "no label file next to it (expected <name>_label/_mask/_seg/_gt)")
            cases.append(Case(stem, [p], label_of.get(stem)))
    if not cases:
        raise DataError(root, "no image/label pairs found")
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(root, f"several images share the name(s) {dupes[:5]}")
    classes = _optional_classes(root)
    remap = {255: 1} if list(classes) == [1] else None
    return Dataset(root, "pairs", cases, classes, ["image"], label_remap=remap, problems=problems.items)


#: format name -> format, in ``auto`` detection order (most specific first).
DATASET_FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat("nnunet", "nnU-Net v2 dataset.json + imagesTr/labelsTr", _detect_nnunet, _read_nnunet),
        DatasetFormat("msd", "Medical Segmentation Decathlon dataset.json", _detect_msd, _read_msd),
        DatasetFormat("salt", "SALT images/ masks/ data_split.csv", _detect_salt, _read_salt),
        DatasetFormat("dicom", "DICOM series folders + NIfTI labels", _detect_dicom, _read_dicom),
        DatasetFormat("pairs", "image/label pairs matched by name", _detect_pairs, _read_pairs),
    )
}


def detect_format(root: str | Path) -> str:
    """Name of the first format in :data:`DATASET_FORMATS` whose layout ``root`` matches.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DataError: ``dataset.json`` is not valid JSON (the message gives the error and its line), or no format
            matches (the message lists them).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    if (root / "dataset.json").is_file():
        read_json(
            root / "dataset.json"
        )  # a malformed one is named with its JSON error, not "no known layout"
    for fmt in DATASET_FORMATS.values():
        if fmt.detect(root):
            return fmt.name
    raise DataError(
        root,
        f"not a dataset in any known layout ({', '.join(DATASET_FORMATS)}); see "
        "salt_seg.data.formats for each layout",
    )


def load_dataset(root: str | Path, format: str = "auto", *, strict: bool = True) -> Dataset:
    """Index a dataset folder (no voxels are read).

    Args:
        root: the dataset folder.
        format: a name in :data:`DATASET_FORMATS` or ``auto``.
        strict: raise on the first structural problem (missing label, ...); with ``False`` they are collected
            in :attr:`Dataset.problems` (``data check`` uses this).

    Raises:
        ValueError: unknown format name.
        FileNotFoundError: ``root`` is not a folder.
        DataError: the folder does not match the format, or (strict) a structural problem.
    """
    root = Path(root)
    if format != "auto" and format not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; valid: {['auto', *DATASET_FORMATS]}")
    name = detect_format(root) if format == "auto" else format
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    return DATASET_FORMATS[name].read(root, strict)
