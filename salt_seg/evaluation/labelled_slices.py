"""2-D slices of a dataset's labelled cases, at their native resolution, for the data-only instruments.

The resolution ceiling (:mod:`salt_seg.evaluation.ceiling`) and the intensity floor
(:mod:`salt_seg.evaluation.floors`) need each slice's label map (and image) exactly as a split's indices name it,
without a model and without the preprocessing record's intensity scaling. Cases are read with the dataset's own
readers (:meth:`~salt_seg.data.dataset.Dataset.load_image` / ``load_label``, every input check applies),
oriented to RAS (:meth:`~salt_seg.data.volume.Volume.to_ras`, no resampling) and cut with
:func:`~salt_seg.data.volume.extract_slice`: the slices, indices and display orientation that
:func:`~salt_seg.data.split.make_split`, :class:`~salt_seg.data.slices.SliceDataset` and ``salt-seg evaluate``
use (with ``Preprocessing.spacing`` unset, their grid is this one).

Which slices:

* no split: every slice of every labelled case that holds a labelled structure (label > 0);
* a split part: the part's slice indices; a whole-case entry (volume-level split) stands for every slice
  (``fill="all"``, what ``salt-seg evaluate`` scores) or every labelled slice (``fill="foreground"``, what
  training uses), ``all`` by default for ``val``/``test`` and ``foreground`` for ``train``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from salt_seg.data.volume import extract_slice


@dataclass(frozen=True)
class LabelledSlice:
    """One 2-D slice of a labelled case.

    Attributes:
        case_id: the case.
        index: slice index along ``axis`` of the RAS volume.
        axis: the RAS axis the slice is taken along (2 for 2-D images).
        label: ``H x W`` integer label map (class ids; 0 = background).
        image: ``H x W`` float32 source intensities of channel ``channel`` (e.g. HU, MR units), or ``None``
            when images were not asked for.
        spacing_mm: pixel size in mm along ``(H, W)``.
    """

    case_id: str
    index: int
    axis: int
    label: np.ndarray
    image: np.ndarray | None
    spacing_mm: tuple[float, float]


def iter_labelled_slices(
    dataset: Any,
    *,
    axis: int = 2,
    split: Any = None,
    part: str = "test",
    fill: str | None = None,
    images: bool = False,
    channel: int = 0,
) -> Iterator[LabelledSlice]:
    """Yield the labelled slices of a dataset, or of one part of a split, case by case.

    Args:
        dataset: a :class:`~salt_seg.data.dataset.Dataset` (``salt_seg.data.load_dataset``).
        axis: RAS axis slices are taken along; a slice-level split must use the same one.
        split: a :class:`~salt_seg.data.split.Split`; ``None`` = every labelled slice of every labelled case.
        part: the split part (``train``, ``val``, ``test``).
        fill: what a whole-case split entry stands for: ``all`` or ``foreground`` slices (default: module
            docstring).
        images: also read the images (``LabelledSlice.image``).
        channel: the image channel to return.

    Raises:
        ValueError: bad ``axis``, ``part``, ``fill`` or ``channel``, a split along another axis, or a split
            slice outside its volume.
        DataError: a case fails to load, or a split names a case the dataset does not have.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    fill = fill or ("foreground" if part == "train" else "all")
    if fill not in ("all", "foreground"):
        raise ValueError(f"fill must be 'all' or 'foreground', got {fill!r}")
    if split is None:
        wanted: dict[str, list[int] | None] = {c.case_id: None for c in dataset.labelled}
        fill = "foreground"
    else:
        if split.level == "slice" and split.axis != axis:
            raise ValueError(f"the split's slices are along axis {split.axis}, not axis {axis}")
        wanted = split.slices(part)  # raises ValueError for an unknown part
    for case_id, indices in wanted.items():
        image = dataset.load_image(case_id)
        label = dataset.load_label(case_id, image).to_ras()
        if images:
            if not 0 <= channel < image.n_channels:
                raise ValueError(f"case {case_id}: channel {channel} but the image has {image.n_channels}")
            image = image.to_ras()
        ax = 2 if image.is_2d else axis
        data = label.data
        spacing = label.spacing
        plane = tuple(spacing[a] for a in range(3) if a != ax)
        spacing_2d = (float(plane[1]), float(plane[0]))  # display rows run along the second in-plane axis
        if indices is None:
            if fill == "all":
                indices = list(range(data.shape[ax]))
            else:
                other = tuple(a for a in range(3) if a != ax)
                indices = [int(i) for i in np.flatnonzero(data.any(axis=other))]
        for s in indices:
            if not 0 <= s < data.shape[ax]:
                raise ValueError(f"case {case_id}: slice {s} outside 0..{data.shape[ax] - 1} (axis {ax})")
            yield LabelledSlice(
                case_id,
                int(s),
                ax,
                np.ascontiguousarray(extract_slice(data, ax, s)),
                np.ascontiguousarray(extract_slice(image.array[channel], ax, s), dtype=np.float32)
                if images
                else None,
                spacing_2d,
            )
