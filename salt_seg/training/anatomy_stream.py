"""The pretraining stream of built-in base v2: synthetic anatomy, with synthetic objects mixed in.

Each item is one generated slice and up to :data:`MAX_PROMPTED` of its structures, relabelled ``1..M`` (the
others are set to 0: they are simply not prompted in this sample; the targets are binary masks of the prompted
structure). Structures are drawn to cover every size, so boxes and clicks meet nuclei, ribbons, shells and
whole tissues alike. A fraction of the items are the v1 base's synthetic objects, so what the base learned there
(isolated objects, crowded boxes) is kept.

Sample ``i`` of a stream with seed ``s`` depends on ``(s, i)`` only: a resumed pretraining sees the same data.
Nothing here reads a real image, template or atlas (the evaluation datasets must stay unseen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from salt_seg.data.anatomy import AnatomyParams, synthetic_anatomy_2d
from salt_seg.preprocessing import Preprocessing, prepare_slice
from salt_seg.training.objects_stream import GeneratorParams, draw_objects

#: structures prompted per sample (the prompt ids are 1..MAX_PROMPTED)
MAX_PROMPTED = 6
#: seed of the held-out anatomy set (never used for training streams)
ANATOMY_HELDOUT_SEED = 31337
MIN_PIXELS = 12


@dataclass(frozen=True)
class StreamParams:
    """How a pretraining stream mixes its sources.

    Attributes:
        anatomy: generator parameters of the anatomy samples.
        objects_fraction: share of samples drawn from the v1 synthetic-objects generator.
        max_prompted: structures prompted per sample.
    """

    anatomy: AnatomyParams = AnatomyParams()
    objects_fraction: float = 0.25
    max_prompted: int = MAX_PROMPTED

    def __post_init__(self) -> None:
        if not 0.0 <= self.objects_fraction <= 1.0:
            raise ValueError(f"StreamParams.objects_fraction must be in [0, 1], got {self.objects_fraction}")
        if not 1 <= self.max_prompted <= 16:
            raise ValueError(f"StreamParams.max_prompted must be in 1..16, got {self.max_prompted}")


#: a structure is prompted only when a box or a click can name it: its largest connected piece holds this share
#: of it, and it fills this share of its bounding box. Shells, folded ribbons and body-wide tissues fail: their
#: boxes all cover the body, so box targets would contradict each other (the ambiguity that stalled few-shot
#: training on tissue classes). They stay in the image as context.
MIN_MAIN_PIECE = 0.8
MIN_BOX_FILL = 0.3


def promptable(mask: np.ndarray) -> bool:
    """Whether a box or a click on ``mask`` names it unambiguously (see :data:`MIN_BOX_FILL`)."""

    ys, xs = np.nonzero(mask)
    area = ys.size
    if area < MIN_PIXELS:
        return False
    if area / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)) < MIN_BOX_FILL:
        return False
    lab, n = ndimage.label(mask)
    return n == 1 or np.bincount(lab.ravel())[1:].max() >= MIN_MAIN_PIECE * area


def choose_structures(label: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Relabel up to ``k`` promptable structures of ``label`` as ``1..k`` (others 0), drawn at random.

    Only structures that a box or a click names unambiguously are prompted (:func:`promptable`).
    """
    ids = np.unique(label[label > 0])
    keep = np.array([i for i in ids if promptable(label == i)], dtype=np.int64)
    out = np.zeros(label.shape, dtype=np.int64)
    if keep.size == 0:
        return out
    chosen = rng.choice(keep, size=min(k, keep.size), replace=False)
    for new, old in enumerate(chosen, start=1):
        out[label == old] = new
    return out


class SyntheticAnatomy(torch.utils.data.Dataset):
    """An indexable, deterministic stream of generated slices (see the module docstring).

    Items: ``image`` ``3 x S x S`` model input, ``label`` ``S x S`` int64 prompt ids (0 = not prompted).
    """

    def __init__(self, n: int, seed: int, params: StreamParams, record: Preprocessing) -> None:
        self.n, self.seed, self.params, self.record = int(n), int(seed), params, record

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, i, 7])
        p = self.params
        if rng.random() < p.objects_fraction:
            return draw_objects(GeneratorParams(shape=p.anatomy.shape), rng, p.max_prompted)
        img, lab = synthetic_anatomy_2d(p.anatomy, rng)
        return img, choose_structures(lab, p.max_prompted, rng)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, lab = self.sample(i)
        x, tf = prepare_slice(img, self.record, (0.0, 1.0))
        if tf.resized_size != tuple(lab.shape):
            raise ValueError("pretraining images must already have the model's input size")
        return {"image": x, "label": torch.from_numpy(lab), "case_id": f"anatomy{i}", "slice_index": i}
