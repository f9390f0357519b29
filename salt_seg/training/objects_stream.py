"""The synthetic-objects stream of the v1 bases: images of ellipses, rectangles and triangles whose every object is a
target ("objectness"), and the fixed held-out set that scores a pretrained base.

Sample ``i`` of a stream is drawn from ``default_rng([seed, i])``, so every stream is indexable and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from salt_seg.data import synthetic_2d
from salt_seg.preprocessing import Preprocessing, prepare_slice

HELDOUT_SEED = 20260
MAX_OBJECTS = 6


@dataclass(frozen=True)
class GeneratorParams:
    """Synthetic image parameters (see :func:`salt_seg.data.synthetic_2d`)."""

    shape: tuple[int, int] = (256, 256)
    n_objects: tuple[int, int] = (1, 5)
    size: tuple[float, float] = (0.06, 0.3)
    contrast: float = 0.4
    noise: float = 0.06
    texture: float = 0.35
    kinds: tuple[str, ...] = ("ellipse", "rectangle", "triangle")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


#: the held-out evaluation set: moderately sized objects, same appearance statistics
HELDOUT_PARAMS = GeneratorParams(size=(0.1, 0.25))


def instance_map(label: np.ndarray, max_objects: int = MAX_OBJECTS, min_pixels: int = 30) -> np.ndarray:
    """Class map -> instance map ``1..K`` (connected components per class, largest first, at most ``max_objects``)."""

    out = np.zeros(label.shape, dtype=np.int64)
    comps = []
    for cid in np.unique(label[label > 0]):
        lab, n = ndimage.label(label == cid)
        for i in range(1, n + 1):
            m = lab == i
            if m.sum() >= min_pixels:
                comps.append(m)
    comps.sort(key=lambda m: -int(m.sum()))
    for k, m in enumerate(comps[:max_objects]):
        out[m] = k + 1
    return out


def draw_objects(
    params: GeneratorParams, rng: np.random.Generator, max_objects: int = MAX_OBJECTS
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic-objects image and its instance map ``1..K`` (:func:`instance_map`)."""

    p = params
    img, lab = synthetic_2d(
        p.shape,
        n_objects=p.n_objects,
        kinds=p.kinds,
        size=p.size,
        contrast=p.contrast,
        noise=p.noise,
        texture=p.texture,
        seed=rng,
    )
    return img, instance_map(lab, max_objects=max_objects)


class SyntheticObjects(torch.utils.data.Dataset):
    """An indexable, deterministic stream of synthetic images with instance labels (sample i uses seed (seed, i)).

    Items: ``image`` ``3 x S x S`` model input, ``label`` ``S x S`` int64 instance ids (0 = background).
    """

    def __init__(self, n: int, seed: int, params: GeneratorParams, record: Preprocessing) -> None:
        self.n, self.seed, self.params, self.record = int(n), int(seed), params, record

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return draw_objects(self.params, np.random.default_rng([self.seed, i]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, inst = self.sample(i)
        x, tf = prepare_slice(img, self.record, (0.0, 1.0))
        if tf.resized_size != tuple(inst.shape):
            raise ValueError("pretraining images must already have the model's input size")
        return {"image": x, "label": torch.from_numpy(inst), "case_id": f"synthetic{i}", "slice_index": i}
