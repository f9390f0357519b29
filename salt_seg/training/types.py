"""The data side's hand-over to the training loop, in its own module so that both sides import it and neither
imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainData:
    """What the loop needs from the data side.

    ``train``/``val`` are indexable datasets whose items are dicts with ``image`` (``3 x S x S`` float tensor,
    model input), ``label`` (``S x S`` int64 label map in model-input space), ``case_id`` and ``slice_index``.
    ``train`` may expose ``set_random_state(seed)`` (MONAI ``Randomizable``) for deterministic augmentation.
    """

    train: Any
    val: Any
    class_ids: list[int]
    split: dict[str, Any] = field(default_factory=dict)
    dataset_hash: str | None = None
    record: Any = (
        None  # the preprocessing record with the dataset's classes, when it differs from the config's
    )
