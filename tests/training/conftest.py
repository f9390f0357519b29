from __future__ import annotations

import pytest

from salt_seg.configio import from_dict
from salt_seg.model.builtin import pretrain_record
from salt_seg.training.config import ExperimentConfig
from salt_seg.training.pretrain import GeneratorParams, SyntheticObjects
from salt_seg.training.types import TrainData

SIZE = 128  # tiny at half its native size: 4x cheaper, same code path (position tables interpolated)
EASY = GeneratorParams(
    shape=(SIZE, SIZE),
    n_objects=(1, 2),
    size=(0.15, 0.3),
    contrast=0.6,
    noise=0.03,
    kinds=("ellipse", "rectangle"),
)


def tiny_config(**train) -> ExperimentConfig:
    doc = {
        "model": {"variant": "tiny", "checkpoint": None, "image_size": SIZE},
        "adapter": {"name": "salt", "r_lora": 4, "train_mask_decoder": True},
        "data": {"augment": False, "cache": False},
        "preprocessing": {"intensity": "none", "image_size": SIZE, "classes": {1: "object", 2: "second"}},
        "train": {
            "steps": 20,
            "batch_size": 4,
            "lr": 2e-3,
            "warmup_steps": 2,
            "val_every": 10,
            "prompt": "box",
            "box_jitter": 0.0,
            "overlays": 2,
            **train,
        },
    }
    return from_dict(ExperimentConfig, doc)


def synthetic_data(n_train: int = 24, n_val: int = 8) -> TrainData:
    record = pretrain_record(SIZE)
    return TrainData(
        train=SyntheticObjects(n_train, 1, EASY, record),
        val=SyntheticObjects(n_val, 99, EASY, record),
        class_ids=[1, 2],
        split={"kind": "synthetic"},
    )


@pytest.fixture()
def data() -> TrainData:
    return synthetic_data()
