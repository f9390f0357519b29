"""Per-slice training/evaluation samples on top of the cached volume pipeline.

:class:`SliceDataset` caches each case once through :func:`salt_seg.data.pipeline.loading_transforms` (MONAI
``CacheDataset``; few-shot data fits in memory) and serves one sample per slice, or per (slice, class):

==============  ==================================================================================
key             value
==============  ==================================================================================
``image``       ``3 x S x S`` float32 model input (``prepare_slice`` of the record; SAM or MedSAM scale)
``label``       ``S x S`` int64: class ids of the record's classes (others -> 0), or 0/1 per class
``targets``     ``K x S x S`` float32 binary masks, one per record class (slice samples, ``targets=True``)
``class_ids``   ``K`` int64 record class ids (slice samples); ``class_id`` int (per-class samples)
``prompt(s)``   simulated :class:`~salt_seg.prompts.Prompt` in slice pixels (or ``None``) when asked
``transform``   the :class:`~salt_seg.preprocessing.SliceTransform` (slice pixels <-> model input)
``case_id``     case id; ``slice_index`` and ``axis`` locate the slice in the RAS volume
==============  ==================================================================================

Labels are resized with nearest neighbour (``nearest-exact``, aligned with the image's bilinear resize) and
padded with 0 like the image, so they stay integral. Training augmentation (left-right flip, small rotation/scale,
intensity scale/shift/gamma/noise) runs on the native-resolution slice *before* the resize and pad: it is
cheaper there, and the pad region stays exactly what ``prepare_slice`` makes at prediction time. The flip mirrors
the patient in axial and coronal slices, so it also exchanges left/right class pairs
(:mod:`salt_seg.data.laterality`, ``lateral_flip="swap"``); a sagittal slice's columns run front to back, so its
flip exchanges nothing.
Use ``monai.data.DataLoader`` (its worker init reseeds :meth:`SliceDataset.set_random_state`) with
``collate_fn=collate_slices``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset
from monai.data import Dataset as MonaiDataset
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from salt_seg.data.laterality import LATERAL_FLIP_MODES, mirror_pairs, swap_table
from salt_seg.data.pipeline import case_item, loading_transforms, run_transforms
from salt_seg.data.prompts_sim import SIM_MODES, simulate_prompt
from salt_seg.data.readers import DEFAULT_MAX_VOXELS
from salt_seg.data.volume import extract_slice
from salt_seg.preprocessing import Preprocessing, prepare_slice


@dataclass
class AugmentConfig:
    """Training augmentation of 2-D slices (all probabilities per sample).

    Attributes:
        flip_prob: probability of a left-right flip.
        lateral_flip: what the flip does to left/right class pairs: ``swap`` exchanges them (the mirrored
            left structure is the right one; pairs found from the class names, :func:`mirror_pairs`, or
            ``mirror_pairs``), ``off`` makes no flip at all, ``plain`` flips and keeps the labels (before this
            was found; it teaches the model that left and right are the same class).
        mirror_pairs: ``(left_id, right_id)`` pairs to exchange (``None``: found from the class names).
        rotate_deg: largest rotation in degrees (uniform in ``[-rotate_deg, rotate_deg]``).
        scale: largest relative zoom (uniform in ``[1 - scale, 1 + scale]``).
        affine_prob: probability of the rotation/zoom.
        intensity_scale: multiplicative intensity change, ``x * (1 + U(-s, s))``.
        intensity_shift: additive intensity change, ``x + U(-o, o)``.
        gamma: contrast (gamma) range.
        noise_std: standard deviation of Gaussian noise (intensities are in ``[0, 1]``).
        intensity_prob: probability of each intensity change.
    """

    flip_prob: float = 0.5
    lateral_flip: str = "swap"
    mirror_pairs: tuple[tuple[int, int], ...] | None = None
    rotate_deg: float = 10.0
    scale: float = 0.1
    affine_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    intensity_prob: float = 0.3

    def __post_init__(self) -> None:
        if self.lateral_flip not in LATERAL_FLIP_MODES:
            raise ValueError(
                f"AugmentConfig.lateral_flip must be one of {list(LATERAL_FLIP_MODES)}, got {self.lateral_flip!r}"
            )
        if self.mirror_pairs is not None:
            self.mirror_pairs = tuple((int(a), int(b)) for a, b in self.mirror_pairs)
        for name in ("flip_prob", "affine_prob", "intensity_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name, hi in (
            ("rotate_deg", 45.0),
            ("scale", 0.5),
            ("intensity_scale", 1.0),
            ("intensity_shift", 1.0),
            ("noise_std", 1.0),
        ):
            if not 0.0 <= getattr(self, name) <= hi:
                raise ValueError(f"AugmentConfig.{name} must be in [0, {hi}], got {getattr(self, name)}")
        lo, hi = (float(g) for g in self.gamma)
        if not 0.0 < lo <= hi:
            raise ValueError(f"AugmentConfig.gamma must satisfy 0 < low <= high, got {self.gamma}")
        self.gamma = (lo, hi)

    def pairs(self, classes: Mapping[int, str]) -> tuple[tuple[int, int], ...]:
        """The left/right pairs a flip exchanges for these classes (none unless ``lateral_flip`` is ``swap``)."""
        if self.lateral_flip != "swap":
            return ()
        return self.mirror_pairs if self.mirror_pairs is not None else tuple(mirror_pairs(classes))

    def build(self, classes: Mapping[int, str] | None = None):  # -> monai.transforms.Compose
        """The MONAI dictionary transforms over ``image`` (``C x H x W``) and ``label`` (``1 x H x W``).

        A sample dict may carry ``lateral: False`` (a sagittal slice): its flip then exchanges no classes.
        """

        p = self.intensity_prob
        pairs = self.pairs(classes or {})
        return Compose(
            [
                LateralFlipd(
                    keys=["image", "label"],
                    prob=0.0 if self.lateral_flip == "off" else self.flip_prob,
                    spatial_axis=1,
                    pairs=pairs,
                ),
                RandAffined(
                    keys=["image", "label"],
                    prob=self.affine_prob,
                    rotate_range=(math.radians(self.rotate_deg),),
                    scale_range=(self.scale, self.scale),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                ),
                RandScaleIntensityd(keys="image", factors=self.intensity_scale, prob=p),
                RandShiftIntensityd(keys="image", offsets=self.intensity_shift, prob=p),
                RandAdjustContrastd(keys="image", gamma=self.gamma, prob=p),
                RandGaussianNoised(keys="image", std=self.noise_std, prob=p),
            ]
        )


class LateralFlipd(RandFlipd):
    """MONAI's ``RandFlipd`` that also exchanges left/right class ids in ``label`` when it flips a slice whose
    columns run left-right (the sample's ``lateral`` key, default True). Same random draws as ``RandFlipd``."""

    def __init__(
        self, keys: Any, prob: float, spatial_axis: int, pairs: Sequence[tuple[int, int]] = ()
    ) -> None:
        super().__init__(keys=keys, prob=prob, spatial_axis=spatial_axis)
        self.pairs = tuple(pairs)
        size = max((max(a, b) for a, b in self.pairs), default=0) + 1
        self._table = torch.tensor(swap_table(self.pairs, size), dtype=torch.float32)

    def __call__(self, data: Mapping[Any, Any], lazy: bool | None = None) -> dict[Any, Any]:
        d = super().__call__(data, lazy=lazy)
        if self._do_transform and self.pairs and bool(d.get("lateral", True)) and "label" in d:
            lab = d["label"]
            ids = lab.round().long().clamp_(0, len(self._table) - 1)
            swapped = torch.where(lab.round() < len(self._table), self._table[ids], lab)
            d["label"] = swapped
        return d


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (MONAI may hand back MetaTensors, which are slow in plain torch ops)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def resize_label(label2d: np.ndarray, transform: Any) -> torch.Tensor:
    """``H x W`` class ids -> ``S x S`` int64: nearest resize to ``transform.resized_size``, zero padding.

    ``nearest-exact`` samples pixel centres like the image's bilinear resize (``align_corners=False``), so
    label and image stay aligned; values are copied, never blended, so the map stays integral.
    """
    arr = np.asarray(label2d)
    small = arr.size == 0 or (arr.min() >= 0 and arr.max() < 256)
    lab = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8 if small else np.float32))[None, None]
    if tuple(lab.shape[-2:]) != tuple(transform.resized_size):
        lab = F.interpolate(lab, size=transform.resized_size, mode="nearest-exact")
    s = transform.image_size
    out = torch.zeros(s, s, dtype=torch.int64)
    h, w = transform.resized_size
    out[:h, :w] = lab[0, 0]
    return out


def collate_slices(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors (``image``, ``label``, ``targets``, ``class_ids``); keep everything else as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class SliceDataset(torch.utils.data.Dataset):
    """Model-ready 2-D samples from cached 3-D (or 2-D) cases.

    Args:
        items: loader inputs, one per case (:func:`salt_seg.data.pipeline.case_item`).
        record: the preprocessing record (image size, intensity, axis, channels, classes, prompt mode).
        slices: ``all``, ``foreground`` (slices holding any record class), or ``case_id -> indices`` (``None``
            for a case means ``fill``).
        fill: what ``None`` in a ``slices`` mapping stands for (``all`` or ``foreground``).
        train: apply ``augment`` (default :class:`AugmentConfig`) and draw fresh prompts per access.
        augment: augmentation settings (training only).
        per_class: one sample per (slice, class) with a binary ``label`` instead of one per slice.
        prompt_mode: simulate prompts (a :data:`~salt_seg.data.prompts_sim.SIM_MODES` name); ``None`` = no prompts.
        prompt_options: extra keyword arguments for :func:`~salt_seg.data.prompts_sim.simulate_prompt`.
        include_empty: per-class samples where the class is absent; default: only for ``auto`` prompts (a
            geometric prompt is never forced onto a slice without its structure).
        targets: add ``targets`` (per-class binary masks) to slice samples.
        cache: keep preprocessed volumes in memory (MONAI ``CacheDataset``); ``False`` reloads a case whenever
            the requested case changes (one volume kept).
        cache_workers: threads used to fill the cache.
        seed: seed for augmentation and prompt simulation.
        max_voxels: voxel cap for the readers.

    Raises:
        ValueError: bad arguments (named) or a requested slice outside a volume.
        DataError: a case fails to load (from the readers).
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        record: Preprocessing,
        *,
        slices: str | Mapping[str, Sequence[int] | None] = "all",
        fill: str = "all",
        train: bool = False,
        augment: AugmentConfig | None = None,
        per_class: bool = False,
        prompt_mode: str | None = None,
        prompt_options: Mapping[str, Any] | None = None,
        include_empty: bool | None = None,
        targets: bool = False,
        cache: bool = True,
        cache_workers: int = 0,
        seed: int = 0,
        max_voxels: int = DEFAULT_MAX_VOXELS,
    ) -> None:

        if isinstance(slices, str) and slices not in ("all", "foreground"):
            raise ValueError(f"slices must be 'all', 'foreground' or a mapping, got {slices!r}")
        if fill not in ("all", "foreground"):
            raise ValueError(f"fill must be 'all' or 'foreground', got {fill!r}")
        if prompt_mode is not None and prompt_mode not in SIM_MODES:
            raise ValueError(f"prompt_mode must be one of {list(SIM_MODES)} or None, got {prompt_mode!r}")
        self.items = [dict(i) for i in items]
        self.record, self.train, self.per_class = record, train, per_class
        self.prompt_mode, self.prompt_options = prompt_mode, dict(prompt_options or {})
        self.include_empty = (prompt_mode in ("auto", "none")) if include_empty is None else include_empty
        self.with_targets = targets
        self.class_ids = list(record.class_ids)
        aug = augment or AugmentConfig()
        self.mirror_pairs = aug.pairs(record.classes) if train else ()
        self._augment = aug.build(record.classes) if train else None
        self.set_random_state(seed)
        transform = loading_transforms(record, max_voxels=max_voxels)
        if not self.items:  # an empty split part: a valid, empty dataset
            self._volumes: Any = []
        elif cache:
            self._volumes = run_transforms(
                lambda items: CacheDataset(
                    items,
                    transform,
                    cache_rate=1.0,
                    num_workers=cache_workers or None,
                    progress=False,
                    copy_cache=False,
                ),
                self.items,
            )
        else:
            self._volumes = MonaiDataset(self.items, transform)
        self._last: tuple[int, dict[str, Any]] | None = None
        self.index = self._build_index(slices, fill)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        record: Preprocessing,
        *,
        split: Any = None,
        part: str = "train",
        case_ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> SliceDataset:
        """Samples for a :class:`~salt_seg.data.dataset.Dataset`, restricted to a split part or case ids.

        With a split, the part's slice lists are used (whole-volume entries become ``fill``: ``foreground``
        for the train part, ``all`` otherwise); ``train`` (augmentation, fresh prompts) defaults to
        ``part == "train"``. An empty part gives an empty dataset.
        """
        kwargs.setdefault("train", part == "train")
        kwargs.setdefault("fill", "foreground" if part == "train" else "all")
        if split is not None:
            if split.level == "slice" and split.axis != record.axis:
                raise ValueError(
                    f"split slices are along axis {split.axis}, the record uses axis {record.axis}"
                )
            wanted = split.slices(part)
            kwargs.setdefault("slices", wanted)
            case_ids = list(wanted)
        ids = list(case_ids) if case_ids is not None else [c.case_id for c in dataset.labelled]
        return cls([case_item(dataset, i) for i in ids], record, **kwargs)

    # --- randomness -------------------------------------------------------------------------------------------
    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> SliceDataset:
        """Reseed augmentation and prompt simulation (MONAI's DataLoader calls this in each worker)."""
        seed = int(seed if seed is not None else (state.randint(2**31) if state is not None else 0))
        if self._augment is not None:
            self._augment.set_random_state(seed=seed)
        self._rng = np.random.default_rng(seed)
        return self

    # --- indexing ----------------------------------------------------------------------------------------------
    def _volume(self, v: int) -> dict[str, Any]:
        if self._last is not None and self._last[0] == v:
            return self._last[1]
        d = run_transforms(self._volumes.__getitem__, v)
        self._last = (v, d)
        return d

    def _axis(self, d: Mapping[str, Any]) -> int:
        return 2 if d.get("is_2d") else self.record.axis

    def _build_index(
        self, slices: str | Mapping[str, Sequence[int] | None], fill: str
    ) -> list[tuple[int, int, int]]:
        index = []
        for v, item in enumerate(self.items):
            wanted: Any = slices
            if isinstance(slices, Mapping):
                wanted = slices.get(item["case_id"], fill)
                wanted = fill if wanted is None else wanted
            d = self._volume(v)
            axis = self._axis(d)
            n = int(d["image"].shape[1 + axis])
            label = np.asarray(d["label"])[0] if d.get("label") is not None else None
            other = tuple(a for a in range(3) if a != axis)
            present = {c: label_any(label, c, other) for c in self.class_ids} if label is not None else {}
            if isinstance(wanted, str):
                if wanted == "foreground":
                    if label is None:
                        raise ValueError(f"case {item['case_id']}: 'foreground' slices need a label")
                    chosen = sorted({int(i) for c in self.class_ids for i in np.flatnonzero(present[c])})
                else:
                    chosen = list(range(n))
            else:
                chosen = [int(i) for i in wanted]
                bad = [i for i in chosen if not 0 <= i < n]
                if bad:
                    raise ValueError(
                        f"case {item['case_id']}: slice(s) {bad[:5]} outside 0..{n - 1} (axis {axis})"
                    )
            for s in chosen:
                if not self.per_class:
                    index.append((v, s, 0))
                    continue
                for c in self.class_ids:
                    if self.include_empty or (label is not None and present[c][s]):
                        index.append((v, s, c))
        return index

    def __len__(self) -> int:
        return len(self.index)

    # --- samples -------------------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict[str, Any]:
        v, s, class_id = self.index[i]
        d = self._volume(v)
        axis = self._axis(d)
        image = np.ascontiguousarray(extract_slice(np.asarray(d["image"]), axis, s))  # C x H x W in [0, 1]
        has_label = d.get("label") is not None
        label = (
            np.ascontiguousarray(extract_slice(np.asarray(d["label"])[0], axis, s))
            if has_label
            else np.zeros(image.shape[1:], dtype=np.int16)
        )
        label = np.where(np.isin(label, self.class_ids), label, 0)
        if self._augment is not None:
            out = self._augment(
                {
                    "image": torch.from_numpy(image),
                    "label": torch.from_numpy(label[None].astype(np.float32)),
                    "lateral": axis != 0,  # a sagittal slice's columns run front to back
                }
            )
            image = _plain(out["image"]).clamp_(0.0, 1.0).numpy()
            label = _plain(out["label"])[0].round().to(torch.int64).numpy()
        x, tf = prepare_slice(
            image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1), self.record, (0.0, 1.0)
        )
        sample: dict[str, Any] = {
            "image": x,
            "case_id": self.items[v]["case_id"],
            "slice_index": s,
            "axis": axis,
            "transform": tf,
        }
        rng = self._rng if self.train else np.random.default_rng((v, s, class_id))
        if self.per_class:
            mask = label == class_id
            sample["label"] = resize_label(mask, tf)
            sample["class_id"] = class_id
            if self.prompt_mode is not None:
                sample["prompt"] = simulate_prompt(
                    mask, class_id, self.prompt_mode, rng, slice_index=s, axis=axis, **self.prompt_options
                )
            return sample
        lab = resize_label(label, tf)
        sample["label"] = lab
        sample["class_ids"] = torch.tensor(self.class_ids, dtype=torch.int64)
        if self.with_targets:
            sample["targets"] = torch.stack([lab == c for c in self.class_ids]).float()
        if self.prompt_mode is not None:
            sample["prompts"] = [
                simulate_prompt(
                    label == c, c, self.prompt_mode, rng, slice_index=s, axis=axis, **self.prompt_options
                )
                for c in self.class_ids
            ]
        return sample


def label_any(label: np.ndarray, class_id: int, other_axes: tuple[int, ...]) -> np.ndarray:
    """Per-slice presence of ``class_id`` in an ``I x J x K`` label map (reduced over ``other_axes``)."""
    return (label == class_id).any(axis=other_axes)
