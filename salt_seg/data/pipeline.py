"""Volume-level MONAI pipeline shared by training and prediction.

``load -> channel-first -> orientation (RAS) -> optional in-plane resampling -> intensity to [0, 1]``

* Loading uses this package's readers (every bad-input check applies) and yields channel-first
  ``MetaTensor`` s carrying the affine.
* Geometry (:class:`ToPreparedGridd`) goes one way there and back: reorientation is
  :meth:`Geometry.into_ras <salt_seg.data.volume.Geometry.into_ras>` (nibabel's axis permutes/flips, exact) and
  :meth:`~salt_seg.data.volume.Geometry.from_ras` back; resampling (``Preprocessing.spacing``, only the two
  in-plane axes of the slice axis, onto :func:`in_plane_grid`) is :func:`resample` (MONAI's ``SpatialResample``)
  both ways. The image is interpolated bilinearly, labels with nearest neighbour, so label maps stay integral.
* Intensity follows the preprocessing record, per channel and **once per volume** (CT window in HU, MR
  percentiles, min-max): ``intensity_range`` + ``normalize_intensity`` from :mod:`salt_seg.preprocessing`. The
  record's ``channels`` pick which source channels feed SAM's three inputs.

After this stage every slice becomes model input with ``prepare_slice(slice, record, value_range=(0, 1))``, so
train (:class:`salt_seg.data.slices.SliceDataset`) and predict (:func:`prepare_volume`) share one code path.
:meth:`PreparedVolume.to_source` maps a volume-shaped result back onto the file's own voxel grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import AFFINE_TOL, affine_to_spacing, compute_shape_offset, zoom_affine
from monai.transforms import Compose, MapTransform, SpatialResample

from salt_seg.data.errors import DataError
from salt_seg.data.labels import load_label
from salt_seg.data.readers import DEFAULT_MAX_VOXELS, load_channels, load_volume
from salt_seg.data.volume import Geometry, Volume, extract_slice
from salt_seg.preprocessing import Preprocessing, intensity_range, normalize_intensity, prepare_slice

if TYPE_CHECKING:
    from salt_seg.data.dataset import Dataset
    from salt_seg.preprocessing import SliceTransform


def select_channels(array: np.ndarray, channels: Sequence[int], name: str = "image") -> np.ndarray:
    """Pick the record's source channels from ``C x ...``; errors name the volume and the channel count."""
    bad = [c for c in channels if not 0 <= c < array.shape[0]]
    if bad:
        raise DataError(
            None,
            f"{name}: preprocessing channels {list(channels)} but the image has {array.shape[0]} channel(s)",
        )
    return array[list(channels)]


def normalize_volume(
    array: np.ndarray, record: Preprocessing
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Scale each channel of ``C x I x J x K`` to ``[0, 1]`` float32 by the record (one range per channel).

    Returns:
        The normalised array and the ``(low, high)`` source intensities mapped to 0 and 1, per channel.
    """
    out = np.empty(array.shape, dtype=np.float32)
    ranges = []
    for c in range(array.shape[0]):
        rng = intensity_range(array[c], record)
        out[c] = normalize_intensity(array[c], rng)
        ranges.append(rng)
    return out, ranges


def unwrap_transform_error(exc: BaseException) -> BaseException:
    """The user error MONAI wrapped in ``RuntimeError("applying transform ...")``, or ``exc`` itself."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DataError | FileNotFoundError):
            return cause
        cause = cause.__cause__
    return exc


def run_transforms(transform: Any, data: Any) -> Any:
    """Apply a MONAI transform, re-raising our one-line user errors instead of MONAI's wrapped traceback."""
    try:
        return transform(data)
    except RuntimeError as exc:
        inner = unwrap_transform_error(exc)
        if inner is exc:
            raise
        raise inner from None


def case_item(dataset: Dataset, case_id: str, *, with_label: bool = True) -> dict[str, Any]:
    """The loader input for one case of a :class:`~salt_seg.data.dataset.Dataset`."""
    case = dataset.case(case_id)
    item: dict[str, Any] = {
        "case_id": case.case_id,
        "image": [str(p) for p in case.images],
        "series": case.series,
        "multichannel": dataset.multichannel,
        "classes": list(dataset.classes),
        "label_remap": dataset.label_remap,
    }
    if with_label and case.label is not None:
        item["label"] = str(case.label)
    return item


class LoadVolumed(MapTransform):
    """Read ``image`` (and ``label``) paths with :mod:`salt_seg.data.readers` into channel-first MetaTensors.

    Input keys: ``image`` (a path or a list of channel paths), optional ``label``, ``series``,
    ``multichannel``, ``classes``, ``label_remap`` (see :func:`case_item`). Adds ``source`` (the file's
    :class:`~salt_seg.data.volume.Geometry`) and ``is_2d``.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] = ("image", "label"),
        max_voxels: int = DEFAULT_MAX_VOXELS,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if max_voxels < 1:
            raise ValueError(f"LoadVolumed: max_voxels must be >= 1, got {max_voxels}")
        self.max_voxels = max_voxels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        paths = d["image"] if isinstance(d["image"], list | tuple) else [d["image"]]
        if len(paths) > 1:
            image = load_channels(paths, max_voxels=self.max_voxels)
        else:
            multichannel = bool(d.get("multichannel"))
            image = load_volume(
                paths[0], series=d.get("series"), max_voxels=self.max_voxels, multichannel=multichannel
            )
        d["image"] = to_metatensor(image)
        d["source"] = image.geometry
        d["is_2d"] = image.is_2d
        if "label" in self.keys and d.get("label") is not None:
            label = load_label(
                d["label"],
                image,
                classes=d.get("classes"),
                remap=d.get("label_remap"),
                max_voxels=self.max_voxels,
            )
            d["label"] = to_metatensor(label)
        return d


def to_metatensor(vol: Volume) -> MetaTensor:
    """A channel-first ``MetaTensor`` with the volume's affine (RAS+ world, as MONAI expects)."""
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(vol.array)),
        affine=torch.as_tensor(vol.affine),
        meta={"space": "RAS"},
    )


class NormalizeVolumed(MapTransform):
    """Select ``record.channels`` of ``image`` and scale each to ``[0, 1]`` by the record, once per volume.

    Adds ``value_range`` (per selected channel, in source units, e.g. HU) to the dictionary.
    """

    def __init__(self, record: Preprocessing, keys: Sequence[Hashable] = ("image",)) -> None:
        super().__init__(keys)
        self.record = record

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = np.asarray(img.numpy() if hasattr(img, "numpy") else img)
            arr = select_channels(arr, self.record.channels, str(d.get("case_id", "image")))
            norm, ranges = normalize_volume(arr, self.record)
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            d[key] = MetaTensor(torch.from_numpy(norm), meta=meta)  # meta carries the affine
            d["value_range"] = ranges
        return d


class LabelToIntd(MapTransform):
    """Round ``label`` (float after resampling) to int16 once, so cached label maps are integral and small."""

    def __init__(self, keys: Sequence[Hashable] = ("label",)) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            d[key] = (torch.round(lab) if lab.is_floating_point() else lab).to(torch.int16)
        return d


def in_plane_grid(ras: Geometry, spacing: float, axis: int) -> Geometry:
    """The grid ``ras`` is resampled onto for ``Preprocessing.spacing``: the same axis directions, ``spacing`` mm
    along the two in-plane axes of ``axis``, the through-plane spacing kept (MONAI ``Spacing``'s grid).

    The extent between the first and last voxel centres is kept: ``n`` voxels of ``d`` mm become
    ``round((n - 1) * d / spacing) + 1``; a spacing within MONAI's ``AFFINE_TOL`` of the target is kept as is.
    """

    pixdim = np.full(3, float(spacing))
    pixdim[axis] = -1.0  # non-positive: keep the through-plane spacing
    original = affine_to_spacing(ras.affine, 3, pixdim.dtype)
    pixdim = np.where(np.abs(original - pixdim) <= AFFINE_TOL, original, pixdim)
    affine = zoom_affine(ras.affine, pixdim, diagonal=False)
    shape, offset = compute_shape_offset(ras.shape, ras.affine, affine)
    affine[:3, 3] = offset[:3]
    return Geometry(affine, tuple(int(s) for s in shape))  # type: ignore[arg-type]


#: interpolation order -> MONAI resampling mode
RESAMPLE_MODES = {0: "nearest", 1: "bilinear"}


def resample(array: np.ndarray | torch.Tensor, src: Geometry, dst: Geometry, *, order: int) -> torch.Tensor:
    """Values of ``C x I x J x K`` on grid ``src`` at the voxel centres of grid ``dst`` (float32).

    MONAI's ``SpatialResample`` (what ``Spacing`` runs): ``order`` 0 nearest neighbour (label maps), 1 linear;
    voxels beyond ``src`` take its border values. Used both ways: onto the prepared grid and back.
    """

    if order not in RESAMPLE_MODES:
        raise ValueError(f"resample: order must be one of {list(RESAMPLE_MODES)}, got {order}")
    img = MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(src.affine))
    out = SpatialResample(mode=RESAMPLE_MODES[order], padding_mode="border")(
        img, dst_affine=torch.as_tensor(dst.affine), spatial_size=dst.shape
    )
    assert isinstance(out, MetaTensor)
    return out.as_tensor()


class ToPreparedGridd(MapTransform):
    """Source grid -> prepared grid: reorient to RAS (exact), then resample in-plane if ``record.spacing`` is set.

    Images are interpolated linearly, ``label`` with nearest neighbour. :meth:`PreparedVolume.to_source` is the
    inverse (the same two functions backwards).
    """

    def __init__(self, record: Preprocessing, keys: Sequence[Hashable] = ("image", "label")) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.record = record

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            source = Geometry(np.asarray(img.affine, dtype=np.float64), tuple(img.shape[1:]))
            grid = source.to_ras()
            arr: np.ndarray | torch.Tensor = source.into_ras(np.asarray(img))
            if self.record.spacing is not None:
                target = in_plane_grid(grid, self.record.spacing, self.record.axis)
                arr, grid = resample(arr, grid, target, order=0 if key == "label" else 1), target
            d[key] = MetaTensor(
                torch.as_tensor(arr), affine=torch.as_tensor(grid.affine), meta={"space": "RAS"}
            )
        return d


def volume_transforms(record: Preprocessing, *, keys: Sequence[str] = ("image", "label")) -> Compose:
    """Prepared grid (:class:`ToPreparedGridd`) -> intensity, as a MONAI ``Compose`` over channel-first MetaTensors."""
    steps: list[Any] = [ToPreparedGridd(record, keys)]
    if "label" in keys:
        steps.append(LabelToIntd())
    steps.append(NormalizeVolumed(record))
    return Compose(steps)


def loading_transforms(record: Preprocessing, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Compose:
    """:class:`LoadVolumed` followed by :func:`volume_transforms`: paths in, model-ready volumes out."""
    return Compose(
        [LoadVolumed(("image", "label"), max_voxels=max_voxels), *volume_transforms(record).transforms]
    )


@dataclass
class PreparedVolume:
    """A volume after the pipeline, ready to be cut into model-input slices, and the way back.

    Attributes:
        image: ``C x I x J x K`` float32 in ``[0, 1]`` (selected channels, RAS, resampled if asked).
        affine: ``4 x 4`` voxel -> RAS mm of ``image``'s grid.
        label: ``I x J x K`` int64 labels on the same grid, or ``None``.
        value_range: per channel, the source intensities mapped to 0 and 1.
        source: the grid of the file the volume was read from.
        record: the preprocessing record used.
        is_2d: the source is a 2-D picture (slices are then taken along axis 2 whatever ``record.axis``).
        name: case id or volume name.
    """

    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None
    value_range: list[tuple[float, float]]
    source: Geometry
    record: Preprocessing
    is_2d: bool = False
    name: str = ""

    @property
    def axis(self) -> int:
        return 2 if self.is_2d else self.record.axis

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[1 + self.axis])

    def slice_image(self, index: int) -> np.ndarray:
        """``C x H x W`` display-oriented slice (see :func:`salt_seg.data.volume.extract_slice`)."""
        return extract_slice(self.image, self.axis, index)

    def slice_label(self, index: int) -> np.ndarray:
        """``H x W`` label slice, aligned with :meth:`slice_image`."""
        if self.label is None:
            raise RuntimeError(f"{self.name}: prepared without a label")
        return extract_slice(self.label, self.axis, index)

    def model_input(self, index: int) -> tuple[torch.Tensor, SliceTransform]:
        """``3 x S x S`` model input of slice ``index`` and its :class:`~salt_seg.preprocessing.SliceTransform`."""

        s = self.slice_image(index)
        return prepare_slice(s[0] if s.shape[0] == 1 else np.moveaxis(s, 0, -1), self.record, (0.0, 1.0))

    def to_source(self, array: np.ndarray, *, order: int = 0) -> np.ndarray:
        """Map an ``I x J x K`` array on this grid back to the source file's voxel grid.

        Args:
            array: e.g. a predicted label map (``order=0``, nearest) or probabilities (``order=1``).
            order: interpolation order when the pipeline resampled; ignored otherwise.

        Returns:
            An array of shape ``source.shape``, voxel-aligned with the file the volume was read from.
        """
        arr = np.asarray(array)
        if arr.shape != tuple(self.image.shape[1:]):
            raise ValueError(f"to_source: array shape {arr.shape} != prepared shape {self.image.shape[1:]}")
        ras = self.source.to_ras()
        grid = Geometry(self.affine, arr.shape)
        if grid.shape != ras.shape or not np.allclose(grid.affine, ras.affine, atol=1e-4):
            back = resample(arr[None], grid, ras, order=order)[0].numpy()
            arr = back.astype(arr.dtype) if order == 0 else back  # nearest copies values: exact
        return self.source.from_ras(arr)


def prepare_volume(volume: Volume, record: Preprocessing, label: Volume | None = None) -> PreparedVolume:
    """Run the volume pipeline on an in-memory volume (what predict and the viewer call).

    Args:
        volume: as returned by :func:`~salt_seg.data.readers.load_volume` (any orientation).
        record: the preprocessing record saved with the model.
        label: optional label on the same grid (from :func:`~salt_seg.data.readers.load_label`).

    Raises:
        DataError: the record's channels do not exist in the volume.
    """
    d: dict[str, Any] = {
        "image": to_metatensor(volume),
        "case_id": volume.name,
        "source": volume.geometry,
        "is_2d": volume.is_2d,
    }
    keys = ["image"]
    if label is not None:
        d["label"] = to_metatensor(label)
        keys.append("label")
    return prepared_from_item(run_transforms(volume_transforms(record, keys=keys), d), record)


def prepared_from_item(d: Mapping[str, Any], record: Preprocessing) -> PreparedVolume:
    """Wrap a (cached) pipeline output dictionary as a :class:`PreparedVolume`."""
    lab = None
    if d.get("label") is not None:
        lab = np.asarray(d["label"])[0].astype(np.int64)
    img = d["image"]
    return PreparedVolume(
        np.asarray(img),
        np.asarray(img.affine, dtype=np.float64),
        lab,
        d["value_range"],
        d["source"],
        record,
        bool(d.get("is_2d", False)),
        str(d.get("case_id", "")),
    )
