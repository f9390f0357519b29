"""Floors: what a model with no spatial learning at all scores, fitted on the same training slices.

:class:`IntensityClassifier` labels every pixel from its intensity alone (background, label 0, is a class like
any other, so every pixel gets a class):

* ``nearest_mean``: the class whose mean training intensity is closest (one number per class);
* ``gaussian``: per class a normal distribution of intensity (mean, variance) and a prior (its share of
  training pixels); the class of maximum posterior.

Ties go to the lowest class id. :func:`intensity_floor` fits one on a split's training slices and scores it on
its test slices with the project's metrics (:func:`salt_seg.evaluation.metrics.evaluate_slices`: Dice per
slice and class, both-empty comparisons excluded and counted, a miss or a false positive scores 0), so its
numbers sit beside ``salt-seg evaluate``'s. A segmentation model that does not beat this floor has learnt
nothing an intensity threshold does not know.

Intensities are the images' own (HU for CT, scanner units for MR), read from the files as the split's indices
name the slices (:func:`salt_seg.evaluation.labelled_slices.iter_labelled_slices`). Fitting across volumes with
different MR scalings mixes those scalings, as the floor should: it is the simplest thing that could work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salt_seg.data import load_dataset, load_split
from salt_seg.evaluation.labelled_slices import iter_labelled_slices
from salt_seg.evaluation.metrics import evaluate_slices
from salt_seg.evaluation.summary import aggregate

log = logging.getLogger(__name__)

#: classifier kinds of :class:`IntensityClassifier`.
KINDS = ("nearest_mean", "gaussian")


class IntensityClassifier:
    """Per-pixel intensity classifier (module docstring).

    Args:
        kind: ``nearest_mean`` or ``gaussian``.

    Attributes (after :meth:`fit`):
        classes: the class ids it predicts, ascending (background 0 included when it was seen).
        means: mean intensity per class (same order).
        variances: intensity variance per class (``gaussian``; floored, see :meth:`fit`).
        priors: share of training pixels per class (``gaussian``).

    Raises:
        ValueError: unknown ``kind`` (the message lists the valid ones).
    """

    def __init__(self, kind: str = "nearest_mean") -> None:
        if kind not in KINDS:
            raise ValueError(f"IntensityClassifier: unknown kind {kind!r}; valid: {list(KINDS)}")
        self.kind = kind
        self.classes: np.ndarray | None = None
        self.means: np.ndarray | None = None
        self.variances: np.ndarray | None = None
        self.priors: np.ndarray | None = None

    def fit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        classes: Sequence[int] | None = None,
    ) -> IntensityClassifier:
        """Estimate each class's intensity statistics from every pixel of the training slices.

        Args:
            images: ``H x W`` slices of intensities (sizes may differ between slices).
            labels: the matching ``H x W`` integer label maps (0 = background, a class like the others).
            classes: the classes it must be able to predict; ``None`` = those present in ``labels``. A class
                listed here but absent from every training slice is an error: nothing could be estimated
                for it. (Without ``classes``, such a class is simply never predicted.)

        Returns:
            ``self``.

        Raises:
            ValueError: no slices, mismatched counts or shapes, non-2-D or non-finite input, non-integer
                labels, or a listed class with no training pixel (named).
        """
        if len(images) != len(labels):
            raise ValueError(f"fit: {len(images)} image(s) but {len(labels)} label map(s)")
        if not images:
            raise ValueError("fit: no training slices")
        xs, ys = [], []
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            img, lab = np.asarray(img), np.asarray(lab)
            if img.ndim != 2 or img.shape != lab.shape:
                raise ValueError(
                    f"fit: slice {i}: image {img.shape} and label {lab.shape} must be the same H x W"
                )
            if lab.dtype.kind not in "biu":
                raise ValueError(f"fit: slice {i}: labels must be integers, got {lab.dtype}")
            if not np.isfinite(img).all():
                raise ValueError(f"fit: slice {i}: the image contains NaN or Inf values")
            xs.append(img.astype(np.float64).ravel())
            ys.append(lab.astype(np.int64).ravel())
        x, y = np.concatenate(xs), np.concatenate(ys)
        seen = np.unique(y)
        if classes is None:
            wanted = seen
        else:
            wanted = np.unique(np.asarray([int(c) for c in classes], dtype=np.int64))
            missing = sorted(int(c) for c in np.setdiff1d(wanted, seen))
            if missing:
                raise ValueError(
                    f"fit: class(es) {missing} have no pixel in the training slices, so no intensity can be "
                    "estimated for them; train on slices that hold them or leave them out of classes"
                )
        means, variances, counts = [], [], []
        for c in wanted:
            v = x[y == c]
            means.append(v.mean())
            variances.append(v.var())
            counts.append(v.size)
        self.classes = wanted.astype(np.int64)
        self.means = np.asarray(means)
        # A class of constant intensity has variance 0; floor it at a small share of the overall variance so
        # its log-density stays finite (and at an absolute epsilon for a constant image).
        self.variances = np.maximum(np.asarray(variances), 1e-6 * float(x.var()) + 1e-12)
        self.priors = np.asarray(counts, dtype=np.float64) / float(sum(counts))
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label every pixel of an ``H x W`` slice.

        Returns:
            ``H x W`` int64 label map of :attr:`classes` values.

        Raises:
            RuntimeError: called before :meth:`fit`.
            ValueError: ``image`` is not 2-D or holds NaN/Inf.
        """
        if self.classes is None or self.means is None:
            raise RuntimeError("IntensityClassifier.predict called before fit")
        img = np.asarray(image, dtype=np.float64)
        if img.ndim != 2:
            raise ValueError(f"predict expects an H x W slice, got shape {img.shape}")
        if not np.isfinite(img).all():
            raise ValueError("predict: the image contains NaN or Inf values")
        x = img[..., None]  # H x W x 1 against K classes
        if self.kind == "nearest_mean":
            best = np.argmin(np.abs(x - self.means), axis=-1)
        else:
            assert self.variances is not None and self.priors is not None
            score = (
                np.log(self.priors)
                - 0.5 * np.log(self.variances)
                - (x - self.means) ** 2 / (2.0 * self.variances)
            )
            best = np.argmax(score, axis=-1)
        return self.classes[best]


@dataclass
class FloorResult:
    """An intensity floor on a split's test part.

    Attributes:
        kind: the classifier kind.
        per_class: ``class id -> {"mean", "std", "n"}`` of the per-slice Dice (both-empty slices excluded).
        counts: ``class id -> {"both_present", "both_empty", "pred_empty", "gt_empty"}`` slice counts.
        classifier: the fitted classifier.
        n_train_slices: training slices it was fitted on.
        n_test_slices: slices it was scored on.
        scores: the per-slice :class:`~salt_seg.evaluation.metrics.Score` s behind the summary.
    """

    kind: str
    per_class: dict[int, dict[str, float | int]]
    counts: dict[int, dict[str, int]]
    classifier: IntensityClassifier
    n_train_slices: int
    n_test_slices: int
    scores: list[Any] = field(default_factory=list, repr=False)


def _present(array: np.ndarray | None) -> np.ndarray:
    """A slice's image or label that was asked for (``iter_labelled_slices(images=True)`` yields both)."""
    assert array is not None
    return array


def intensity_floor(
    dataset: Any,
    split: Any,
    kind: str = "nearest_mean",
    *,
    part: str = "test",
    axis: int | None = None,
    channel: int = 0,
) -> FloorResult:
    """Fit an :class:`IntensityClassifier` on a split's training slices and score it on another part.

    Args:
        dataset: a :class:`~salt_seg.data.dataset.Dataset` or a dataset folder (format detected).
        split: a :class:`~salt_seg.data.split.Split` or a split JSON path.
        kind: ``nearest_mean`` or ``gaussian``.
        part: the part scored (``test``; ``val`` or ``train`` also work).
        axis: RAS slice axis; default the split's own.
        channel: the image channel classified.

    Returns:
        Per-class Dice over the scored slices (mean ± sample std, n), as ``salt-seg evaluate`` counts them.
        A class absent from every training slice is never predicted (logged as a warning), so it scores 0
        wherever it is present.

    Raises:
        ValueError: bad ``kind``/``part``, an empty training part, or a split along another axis.
        DataError: unreadable cases or split file.
    """

    classifier = IntensityClassifier(kind)
    if not hasattr(dataset, "labelled"):
        dataset = load_dataset(dataset)
    if not hasattr(split, "part"):
        split = load_split(split)
    axis = split.axis if axis is None else axis
    train = list(
        iter_labelled_slices(dataset, axis=axis, split=split, part="train", images=True, channel=channel)
    )
    if not train:
        raise ValueError("intensity_floor: the split's train part has no slices to fit on")
    classes = sorted(int(c) for c in dataset.classes)
    classifier.fit([_present(s.image) for s in train], [_present(s.label) for s in train])
    unseen = sorted(set(classes) - {int(c) for c in _present(classifier.classes)})
    if unseen:
        log.warning("classes %s are in no training slice: the intensity floor never predicts them", unseen)
    by_case: dict[str, list[Any]] = {}
    for s in iter_labelled_slices(dataset, axis=axis, split=split, part=part, images=True, channel=channel):
        by_case.setdefault(s.case_id, []).append(s)
    scores = []
    for case_id, slices in by_case.items():
        scores.extend(
            evaluate_slices(
                [classifier.predict(s.image) for s in slices],
                [s.label for s in slices],
                slices[0].spacing_mm,
                classes,
                case=case_id,
                slice_indices=[s.index for s in slices],
            )
        )
    summary = aggregate(scores).get("slice", {})
    empty = {"mean": float("nan"), "std": float("nan"), "n": 0}
    return FloorResult(
        kind=kind,
        per_class={c: dict(summary[str(c)]["dice"]) if str(c) in summary else empty for c in classes},
        counts={c: dict(summary[str(c)]["counts"]) if str(c) in summary else {} for c in classes},
        classifier=classifier,
        n_train_slices=len(train),
        n_test_slices=sum(len(v) for v in by_case.values()),
        scores=scores,
    )
