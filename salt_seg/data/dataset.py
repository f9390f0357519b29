"""A dataset on disk, indexed: cases with ids, image and label paths, class names, channel names.

Indexing reads only folder listings and small JSON/CSV files; voxels are read on demand by
:meth:`Dataset.load_image` / :meth:`Dataset.load_label`, which run every check of
:mod:`salt_seg.data.readers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_seg.data.errors import DataError
from salt_seg.data.labels import load_label
from salt_seg.data.readers import DEFAULT_MAX_VOXELS, load_channels, load_volume
from salt_seg.data.volume import Volume

SPLIT_HINTS = ("train", "val", "test")


@dataclass
class Case:
    """One image (one or more channel files) and its optional label map.

    Attributes:
        case_id: identifier unique within the dataset (file stem; never read from a DICOM header).
        images: one path per channel file (nnU-Net ``_0000``...), or a single path (a multi-channel 4-D file,
            a DICOM folder or zip, a 2-D picture).
        label: label map path, or ``None`` for unlabelled cases.
        split: the split the dataset itself assigns (``train``/``val``/``test``), or ``None``.
        series: DICOM series choice for a folder holding several (index or key), or ``None``.
    """

    case_id: str
    images: list[Path]
    label: Path | None = None
    split: str | None = None
    series: int | str | None = None


@dataclass
class Dataset:
    """An indexed dataset.

    Attributes:
        root: the dataset folder.
        format: the format name in :data:`salt_seg.data.formats.DATASET_FORMATS`.
        cases: the cases, sorted by id.
        classes: label id -> name (background 0 implicit).
        channel_names: one name per image channel (``["CT"]``, ``["T1", "T2"]``, ``["R", "G", "B"]``...).
        name: dataset name.
        multichannel: images are single 4-D files whose 4th axis holds the channels (MSD).
        label_remap: value substitutions applied to label files before checking (``{255: 1}`` for 0/255 masks).
        problems: structural problems found while indexing (missing files, count mismatches); only filled when
            indexing with ``strict=False``.
        meta: other facts from the dataset's own description (licence, reference, ...).
    """

    root: Path
    format: str
    cases: list[Case]
    classes: dict[int, str]
    channel_names: list[str] = field(default_factory=lambda: ["image"])
    name: str = ""
    multichannel: bool = False
    label_remap: dict[int, int] | None = None
    problems: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cases = sorted(self.cases, key=lambda c: c.case_id)
        self.name = self.name or self.root.name

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def labelled(self) -> list[Case]:
        return [c for c in self.cases if c.label is not None]

    def case(self, case_id: str) -> Case:
        """The case with this id.

        Raises:
            DataError: unknown id (the message lists a few valid ones).
        """
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise DataError(self.root, f"no case {case_id!r} in dataset {self.name}; e.g. {self.case_ids[:5]}")

    def load_image(self, case: Case | str, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
        """Read a case's image (channels stacked) in its file's own orientation."""
        case = self.case(case) if isinstance(case, str) else case
        if len(case.images) > 1:
            vol = load_channels(case.images, max_voxels=max_voxels)
        else:
            vol = load_volume(
                case.images[0], series=case.series, max_voxels=max_voxels, multichannel=self.multichannel
            )
        vol.name = case.case_id
        if len(self.channel_names) == vol.n_channels:
            vol.channel_names = list(self.channel_names)
        return vol

    def load_label(self, case: Case | str, like: Volume, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
        """Read a case's label map, checked against its image ``like`` and the declared classes.

        Raises:
            DataError: the case has no label, or the label fails a check.
        """
        case = self.case(case) if isinstance(case, str) else case
        if case.label is None:
            raise DataError(case.images[0], f"case {case.case_id} has no label map")
        vol = load_label(
            case.label, like, classes=self.classes, remap=self.label_remap, max_voxels=max_voxels
        )
        vol.name = case.case_id
        return vol


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; errors name the file."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise DataError(path, "expected a JSON object at the top level")
    return doc


def parse_classes(mapping: Any, path: Path, *, name_to_id: bool = False) -> dict[int, str]:
    """Class table from ``{"1": "liver"}`` (or ``{"liver": 1}`` with ``name_to_id``), background dropped.

    Raises:
        DataError: not a mapping, non-integer or negative ids, duplicate ids, region-based (list) labels.
    """
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(path, "'labels' must be a non-empty mapping")
    classes: dict[int, str] = {}
    for key, value in mapping.items():
        raw_id, name = (value, key) if name_to_id else (key, value)
        if isinstance(raw_id, list | tuple):
            raise DataError(
                path, f"label {name!r} is region-based ({raw_id}); only plain class ids are supported"
            )
        try:
            cid = int(raw_id)
        except (TypeError, ValueError):
            raise DataError(path, f"label id {raw_id!r} of {name!r} is not an integer") from None
        if cid < 0 or str(cid) != str(raw_id).strip():
            raise DataError(path, f"label id {raw_id!r} of {name!r} is not a non-negative integer")
        if cid in classes:
            raise DataError(path, f"label id {cid} is used twice ({classes[cid]!r}, {name!r})")
        if cid != 0:
            classes[cid] = str(name)
    if not classes:
        raise DataError(path, "no foreground classes declared")
    return dict(sorted(classes.items()))
