"""The data side of training: dataset -> few-shot split -> model-ready slice datasets."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from salt_seg.data import AugmentConfig, SliceDataset, load_dataset, load_split, make_split
from salt_seg.preprocessing import Preprocessing
from salt_seg.training.config import SPLIT_TERMS, ExperimentConfig
from salt_seg.training.types import TrainData

log = logging.getLogger(__name__)


def dataset_hash(dataset) -> str:
    """SHA-256 over the dataset's image and label file contents, in case order (provenance)."""
    h = hashlib.sha256()
    for case in dataset.cases:
        for p in [*case.images, *([case.label] if case.label else [])]:
            p = Path(p)
            h.update(case.case_id.encode())
            if p.is_file():
                with open(p, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
            else:  # a DICOM folder: hash its files in name order
                for q in sorted(p.rglob("*")):
                    if q.is_file():
                        h.update(q.read_bytes())
    return h.hexdigest()


def build_train_data(cfg: ExperimentConfig, record: Preprocessing) -> TrainData:
    """Load ``cfg.data``, draw (or read) the split and build the training and validation slice datasets.

    The record's classes default to the dataset's own label table when the config does not set them.
    """

    dc = cfg.data
    if not dc.path:
        raise ValueError("data.path is empty: set it in the config or with --set data.path=DATASET_DIR")
    dataset = load_dataset(dc.path, dc.format)
    if not dataset.labelled:
        raise ValueError(f"{dc.path}: the dataset has no labelled cases to train on")
    if cfg.classes_from_dataset and dataset.classes:
        record = dataclasses.replace(record, classes=dict(dataset.classes))
    if dc.split:
        split = load_split(dc.split)
    else:
        split = make_split(
            dataset,
            shots=dc.shots,
            seed=cfg.train.seed if dc.split_seed is None else dc.split_seed,
            level="slice" if dc.holdout == "slices" else "volume",
            val=dc.val,
            test=dc.test,
            guard_mm=dc.guard_mm,
            axis=record.axis,
            protocol=dc.protocol,
            terms=SPLIT_TERMS,
        )
    train = SliceDataset.from_dataset(
        dataset,
        record,
        split=split,
        part="train",
        augment=AugmentConfig(lateral_flip=dc.lateral_flip) if dc.augment else None,
        cache=dc.cache,
        seed=cfg.train.seed,
        train=dc.augment,
    )
    val = SliceDataset.from_dataset(
        dataset, record, split=split, part="val", cache=dc.cache, fill="foreground"
    )
    log.info("data: %d training and %d validation slices from %s", len(train), len(val), dc.path)
    if train.mirror_pairs:
        names = record.classes
        log.info(
            "augmentation: a left-right flip exchanges %d left/right class pairs (%s)",
            len(train.mirror_pairs),
            ", ".join(f"{names[a]} <-> {names[b]}" for a, b in train.mirror_pairs),
        )
    return TrainData(
        train=train,
        val=val,
        class_ids=list(record.class_ids),
        split=split.to_dict(),
        dataset_hash=dataset_hash(dataset),
        record=record,
    )
