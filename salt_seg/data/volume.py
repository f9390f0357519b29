"""The in-memory volume: voxels plus the geometry needed to write results back exactly.

Conventions (shared by readers, pipelines, predict and the viewer):

* ``Volume.array`` is **channel-first** ``C x I x J x K`` (nibabel/MONAI voxel order, *not* SimpleITK's
  ``z, y, x``). A 2-D image is ``C x W x H x 1`` (``I`` = column, ``J`` = row), so a slice along axis 2 of its
  RAS form shows the picture the right way up (see :func:`extract_slice`).
* ``Volume.affine`` maps voxel indices ``(i, j, k, 1)`` to **world RAS+ millimetres** (nibabel's convention:
  x grows towards the patient's right, y anterior, z superior). Images read through ITK/DICOM, whose world is
  LPS, are converted with :data:`salt_seg.geometry.LPS_TO_RAS`.
* :meth:`Volume.to_ras` permutes/flips voxel axes (never resamples) so the axes point R, A, S as closely as the
  affine allows; an oblique affine stays oblique. :meth:`Volume.restore_orientation` is its exact inverse, used
  to write predicted masks in the file's own voxel grid. Both are nibabel's orientation transforms
  (``io_orientation``), applied by :meth:`Geometry.into_ras` and :meth:`Geometry.from_ras`: the one way arrays move
  between a file's grid and its RAS form, here, in the volume pipeline (:mod:`salt_seg.data.pipeline`) and in
  every writer of results.
* A 2-D slice of an RAS array along ``axis`` is shown in the radiological display convention
  (:func:`extract_slice`): patient right on the image's left, anterior (axial) or superior (coronal, sagittal)
  at the top, anterior on the left for sagittal slices. Slice pixels are addressed ``slice[y, x]`` with
  ``x`` = column, ``y`` = row, like :class:`salt_seg.prompts.Prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.orientations as nio
import numpy as np

from salt_seg.data.errors import DataError

#: affine entries may differ by this much (mm) between an image and its label and still count as equal.
GEOMETRY_ATOL_MM = 1e-3
#: relative tolerance on the same comparison (large coordinates carry float32 rounding from file headers).
GEOMETRY_RTOL = 1e-4


def check_affine(affine: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Validate a 4x4 voxel-to-world affine and return it as float64.

    Raises:
        DataError: not 4x4, not finite, or singular (a zero or collapsed voxel axis).
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise DataError(path, f"affine must be 4x4, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(path, "degenerate affine: it contains NaN or Inf")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if (spacing < 1e-6).any():
        raise DataError(
            path, f"degenerate affine: voxel spacing {np.round(spacing, 6).tolist()} mm has a zero"
        )
    # Normalised determinant: ~0 when two axes are parallel even though each has a length.
    det = abs(np.linalg.det(a[:3, :3] / spacing))
    if det < 1e-3:
        raise DataError(path, "degenerate affine: voxel axes are (nearly) parallel")
    return a


@dataclass(frozen=True)
class Geometry:
    """A voxel grid without voxels: enough to map arrays between a file's grid and its RAS form.

    Attributes:
        affine: ``4 x 4`` voxel -> RAS mm.
        shape: spatial shape ``(I, J, K)``.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def to_ras(self) -> Geometry:
        """The grid after :meth:`Volume.to_ras` (axes permuted/flipped towards R, A, S)."""

        ornt = _to_ras_ornt(self.affine)
        shape = [0, 0, 0]
        for i, (j, _) in enumerate(ornt):
            shape[int(j)] = int(self.shape[i])
        return Geometry(self.affine @ nio.inv_ornt_aff(ornt, self.shape), tuple(shape))  # type: ignore[arg-type]

    def into_ras(self, array: np.ndarray) -> np.ndarray:
        """Map ``I x J x K`` (or ``C x I x J x K``) on this grid onto its RAS form (:meth:`to_ras`), exactly.

        On an already-RAS grid the result shares the array's memory (no copy).
        """
        return _reorient(array, self.shape, _to_ras_ornt(self.affine), "grid")

    def from_ras(self, array: np.ndarray) -> np.ndarray:
        """Map ``I x J x K`` (or ``C x I x J x K``) from this grid's RAS form back onto this grid, exactly."""
        return _reorient(array, self.to_ras().shape, _to_ras_ornt(self.affine, back=True), "RAS grid")


@dataclass
class Volume:
    """An image or label map with its geometry.

    Attributes:
        array: ``C x I x J x K`` voxels (float32 for images in physical units, e.g. HU for CT; integer for
            label maps).
        affine: ``4 x 4`` float64 voxel-index -> world RAS+ mm.
        modality: ``CT``, ``MR``, ``image`` (2-D pictures), ``label``, or another DICOM modality code.
        name: a display name with no patient identifiers (file stem, or ``series-<hash>`` for DICOM).
        channel_names: one name per channel (``C`` entries).
        is_2d: the volume came from a 2-D picture (``K == 1``); slices are then taken along axis 2.
        meta: small non-identifying facts about the source (format, rescale applied, ...).
        source_affine: the file's own affine before :meth:`to_ras`, or ``None`` if never reoriented.
        source_shape: the file's own spatial shape ``(I, J, K)`` before :meth:`to_ras`.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "image"
    name: str = "volume"
    channel_names: list[str] = field(default_factory=list)
    is_2d: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"Volume.array must be C x I x J x K (or I x J x K), got shape {arr.shape}")
        self.array = arr
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {self.affine.shape}")
        if not self.channel_names:
            self.channel_names = [f"channel{c}" for c in range(arr.shape[0])]
        if len(self.channel_names) != arr.shape[0]:
            raise ValueError(
                f"Volume.channel_names has {len(self.channel_names)} names for {arr.shape[0]} channels"
            )

    # --- geometry -------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(I, J, K)``."""
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along ``I, J, K`` in mm (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def axcodes(self) -> str:
        """Closest anatomical direction of each voxel axis, e.g. ``"RAS"`` or ``"LPS"``."""

        return "".join(nib.aff2axcodes(self.affine))

    @property
    def data(self) -> np.ndarray:
        """The single channel as ``I x J x K`` (label maps, single-channel images).

        Raises:
            ValueError: the volume has several channels.
        """
        if self.n_channels != 1:
            raise ValueError(f"{self.name}: has {self.n_channels} channels; pick one from .array")
        return self.array[0]

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy sharing this geometry with new voxels (``I x J x K`` or ``C x I x J x K``)."""
        arr = np.asarray(array)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.shape[1:] != self.array.shape[1:]:
            raise ValueError(f"with_array: spatial shape {arr.shape[1:]} != {self.shape}")
        if "channel_names" not in changes and arr.shape[0] != self.n_channels:
            changes["channel_names"] = []
        return replace(self, array=arr, **changes)

    @property
    def geometry(self) -> Geometry:
        """This volume's grid."""
        return Geometry(self.affine, self.shape)

    @property
    def source_geometry(self) -> Geometry:
        """The grid of the file this volume was read from (its own grid if never reoriented)."""
        if self.source_affine is None or self.source_shape is None:
            return self.geometry
        return Geometry(self.source_affine, self.source_shape)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """``N x 3`` voxel indices -> ``N x 3`` RAS mm."""
        p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """``N x 3`` RAS mm -> ``N x 3`` (fractional) voxel indices."""
        p = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        inv = np.linalg.inv(self.affine)
        return p @ inv[:3, :3].T + inv[:3, 3]

    # --- orientation ------------------------------------------------------------------------------------------
    def to_ras(self) -> Volume:
        """Permute/flip voxel axes so they point R, A, S as closely as the affine allows (no resampling).

        Returns:
            A volume whose ``source_affine``/``source_shape`` remember this volume's grid, so
            :meth:`restore_orientation` maps arrays back exactly. Already-RAS volumes share their array.
        """
        src_affine = self.affine if self.source_affine is None else self.source_affine
        src_shape = self.shape if self.source_shape is None else self.source_shape
        if self.source_affine is not None and not np.allclose(
            self.affine, Geometry(src_affine, src_shape).to_ras().affine
        ):
            raise RuntimeError(
                f"{self.name}: to_ras() on a volume that was changed after an earlier to_ras()"
            )
        ras = self.geometry.to_ras()
        return replace(
            self,
            array=self.geometry.into_ras(self.array),
            affine=ras.affine,
            source_affine=src_affine,
            source_shape=src_shape,
        )

    def restore_orientation(self, array: np.ndarray) -> np.ndarray:
        """Map an array on this (RAS) grid back to the source file's voxel grid, exactly.

        Args:
            array: ``I x J x K`` or ``C x I x J x K`` on this volume's grid (e.g. a predicted mask).

        Returns:
            The same values laid out as the source file's voxels (shape ``source_shape`` [with ``C``]).
        """
        arr = np.asarray(array)
        if arr.ndim not in (3, 4) or arr.shape[-3:] != self.shape:
            raise ValueError(
                f"restore_orientation: array shape {arr.shape[-3:]} != volume shape {self.shape}"
            )
        return arr if self.source_affine is None else self.source_geometry.from_ras(arr)

    def source_volume(self, array: np.ndarray, **changes: Any) -> Volume:
        """A volume in the source file's grid holding ``array`` (given on this RAS grid); for writing masks."""
        out = self.restore_orientation(array)
        affine = self.affine if self.source_affine is None else self.source_affine
        return replace(
            self,
            array=out if out.ndim == 4 else out[None],
            affine=affine,
            source_affine=None,
            source_shape=None,
            channel_names=[],
            **changes,
        )


def same_geometry(a: Volume, b: Volume) -> bool:
    """True when two volumes share the spatial shape and (within tolerance) the affine."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL_MM)


# --- slices ---------------------------------------------------------------------------------------------------
def n_slices(shape: tuple[int, ...], axis: int) -> int:
    """Number of slices along ``axis`` of a spatial shape ``(I, J, K)`` (or ``(C, I, J, K)``)."""
    return int(shape[-3:][axis])


def slice_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """``(rows, cols)`` of a slice along ``axis`` of spatial shape ``(I, J, K)``."""
    u, v = (s for d, s in enumerate(shape[-3:]) if d != axis)
    return int(v), int(u)


def extract_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of an RAS array, in display orientation.

    Args:
        array: ``... x I x J x K`` (leading channel axes allowed), RAS oriented.
        axis: 0 (sagittal), 1 (coronal) or 2 (axial).
        index: slice index along ``axis``.

    Returns:
        ``... x rows x cols`` view: with ``(u, v)`` the remaining voxel axes in order, row ``y`` is
        ``v = V - 1 - y`` and column ``x`` is ``u = U - 1 - x``.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    n = array.shape[array.ndim - 3 + axis]
    if not 0 <= index < n:
        raise IndexError(f"slice index {index} out of range 0..{n - 1} along axis {axis}")
    plane = np.take(array, index, axis=array.ndim - 3 + axis)
    return np.swapaxes(plane[..., ::-1, ::-1], -1, -2)


def insert_slice(array: np.ndarray, axis: int, index: int, slice_2d: np.ndarray) -> None:
    """Write a display-oriented slice (``... x rows x cols``) back into ``array`` in place."""
    plane = np.swapaxes(np.asarray(slice_2d), -1, -2)[..., ::-1, ::-1]
    idx: list[Any] = [slice(None)] * array.ndim
    idx[array.ndim - 3 + axis] = index
    array[tuple(idx)] = plane


def slice_to_voxel(shape: tuple[int, ...], axis: int, index: int, x: float, y: float) -> tuple[int, int, int]:
    """Voxel ``(i, j, k)`` under slice pixel ``(x=col, y=row)`` of slice ``index`` along ``axis``.

    ``extract_slice(a, axis, index)[y, x] == a[slice_to_voxel(a.shape, axis, index, x, y)]`` for integer
    pixels; fractional display coordinates (clicks) are rounded to the nearest pixel.
    """
    sp = [int(s) for s in shape[-3:]]
    u_dim, v_dim = (d for d in range(3) if d != axis)
    col, row = int(round(x)), int(round(y))
    if not (0 <= col < sp[u_dim] and 0 <= row < sp[v_dim]):
        raise ValueError(f"pixel (x={x}, y={y}) is outside the {sp[v_dim]} x {sp[u_dim]} slice")
    ijk = [0, 0, 0]
    ijk[axis] = int(index)
    ijk[u_dim] = sp[u_dim] - 1 - col
    ijk[v_dim] = sp[v_dim] - 1 - row
    return tuple(ijk)  # type: ignore[return-value]


def voxel_to_slice(shape: tuple[int, ...], axis: int, ijk: tuple[int, int, int]) -> tuple[int, int, int]:
    """Inverse of :func:`slice_to_voxel`: ``(slice index, x, y)`` of voxel ``ijk``."""
    sp = [int(s) for s in shape[-3:]]
    u_dim, v_dim = (d for d in range(3) if d != axis)
    return int(ijk[axis]), sp[u_dim] - 1 - int(ijk[u_dim]), sp[v_dim] - 1 - int(ijk[v_dim])


# --- orientation helpers (nibabel's ornt arrays: row i = (output axis of input axis i, +1/-1 flip)) ----------
def _to_ras_ornt(affine: np.ndarray, *, back: bool = False) -> np.ndarray:
    """nibabel's orientation transform from the grid of ``affine`` to its RAS form (``back``: the reverse)."""

    grid, ras = nio.io_orientation(affine), nio.axcodes2ornt("RAS")
    return nio.ornt_transform(ras, grid) if back else nio.ornt_transform(grid, ras)


def _reorient(array: np.ndarray, shape: tuple[int, ...], ornt: np.ndarray, grid: str) -> np.ndarray:
    """Apply an orientation transform to the spatial axes of ``I x J x K`` or ``C x I x J x K`` (on ``grid``)."""

    arr = np.asarray(array)
    squeeze = arr.ndim == 3
    if squeeze:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != tuple(shape):
        raise ValueError(f"array shape {arr.shape[1:]} is not the {grid} {tuple(shape)}")
    if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        moved = nio.apply_orientation(np.moveaxis(arr, 0, -1), ornt)
        arr = np.ascontiguousarray(np.moveaxis(moved, -1, 0))
    return arr[0] if squeeze else arr
