"""Prompts between the source image's voxels and the model's slices.

A prompt file and :func:`salt_seg.prompts.load_prompts` give prompts in *source voxel* coordinates: a slice of the
file's own grid (``axis``, ``slice_index``) and in-plane indices ``(x, y)`` along :func:`salt_seg.prompts.plane_axes`.
The model sees slices of the *prepared* grid (:class:`~salt_seg.data.pipeline.PreparedVolume`: RAS-reoriented,
maybe resampled in-plane) in display orientation (:func:`salt_seg.data.volume.extract_slice`), and
:class:`~salt_seg.prompts.Prompt` objects handed to the model use that slice's pixels. Both are planes of the same
voxels, so one ``4 x 4`` matrix maps ``(x, y, slice, 1)`` of one onto the other; a prompt on a source axis that is
not the model's slicing axis is refused rather than guessed.

Boxes are mapped through their pixel *edges* (``x0 - 0.5`` .. ``x1 + 0.5``), so inclusive corners stay inclusive
under flips and in-plane resampling.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from salt_seg.data.pipeline import PreparedVolume
from salt_seg.prompts import Prompt, plane_axes

#: a mapped slice coordinate may be this far from an integer and still name one slice (voxels).
_TOL = 1e-3


def _source_plane_matrix(axis: int) -> np.ndarray:
    """``(x, y, s, 1)`` of a source-voxel prompt -> source voxel ``(i, j, k, 1)``."""
    u, v = plane_axes(axis)
    m = np.zeros((4, 4))
    m[u, 0] = m[v, 1] = m[axis, 2] = m[3, 3] = 1.0
    return m


def _display_plane_matrix(axis: int, shape: tuple[int, ...]) -> np.ndarray:
    """``(x, y, s, 1)`` of a display slice (see :func:`~salt_seg.data.volume.extract_slice`) -> voxel ``(i, j, k, 1)``."""
    u, v = plane_axes(axis)
    m = np.zeros((4, 4))
    m[u, 0], m[u, 3] = -1.0, shape[u] - 1
    m[v, 1], m[v, 3] = -1.0, shape[v] - 1
    m[axis, 2] = m[3, 3] = 1.0
    return m


def source_to_prepared_voxels(prepared: PreparedVolume) -> np.ndarray:
    """``4 x 4`` map from source voxel indices to prepared-grid voxel indices (through RAS mm)."""
    return np.linalg.inv(prepared.affine) @ prepared.source.affine


def source_axis(prepared: PreparedVolume) -> int:
    """The source voxel axis whose slices are the model's slices (``prepared.axis`` before reorientation)."""
    m = source_to_prepared_voxels(prepared)[:3, :3]
    return int(np.argmax(np.abs(m[prepared.axis])))


def _shape(prepared: PreparedVolume) -> tuple[int, int, int]:
    return tuple(int(s) for s in prepared.image.shape[1:])  # type: ignore[return-value]


def plane_transform(prepared: PreparedVolume, src_axis: int, *, to_source: bool = False) -> np.ndarray:
    """``4 x 4`` map of ``(x, y, slice, 1)`` from a source-voxel plane along ``src_axis`` to a model slice.

    Args:
        prepared: the prepared volume.
        src_axis: the source voxel axis the prompt's slice is perpendicular to.
        to_source: return the inverse map (model slice -> source plane).

    Raises:
        ValueError: ``src_axis`` is not the axis the model slices along.
    """
    want = source_axis(prepared)
    if int(src_axis) != want:
        raise ValueError(
            f"the prompt lies on a slice along source axis {src_axis}, but the model segments slices along source "
            f"axis {want} (prepared axis {prepared.axis}); put the prompt on a slice along axis {want}"
        )
    t = (
        np.linalg.inv(_display_plane_matrix(prepared.axis, _shape(prepared)))
        @ source_to_prepared_voxels(prepared)
        @ _source_plane_matrix(int(src_axis))
    )
    return np.linalg.inv(t) if to_source else t


def _map_prompt(
    prompt: Prompt,
    t: np.ndarray,
    n_slices: int,
    plane_size: tuple[int, int],
    out_axis: int,
    where: str,
) -> Prompt:
    """Apply a plane transform ``t`` to a prompt; ``plane_size`` is ``(rows, cols)`` of the target slices."""
    if prompt.slice_index is None:
        raise ValueError(f"{where}: a prompt on a volume needs slice_index")
    s = float(prompt.slice_index)
    rows, cols = plane_size

    def apply(x: float, y: float) -> np.ndarray:
        return t @ np.array([x, y, s, 1.0])

    centre = apply(0.0, 0.0)
    index = int(np.round(centre[2]))
    if abs(centre[2] - index) > 0.5 + _TOL:
        raise ValueError(f"{where}: slice {prompt.slice_index} does not map onto one slice")
    if not 0 <= index < n_slices:
        raise ValueError(
            f"{where}: slice_index {prompt.slice_index} is outside the image ({n_slices} slices)"
        )
    points: list[tuple[float, float]] = []
    for x, y in prompt.points:
        q = apply(x, y)
        if not (-0.5 <= q[0] <= cols - 0.5 and -0.5 <= q[1] <= rows - 0.5):
            raise ValueError(f"{where}: point ({x}, {y}) lies outside slice {prompt.slice_index}")
        points.append((round(float(q[0]), 6), round(float(q[1]), 6)))
    box = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        a, b = apply(x0 - 0.5, y0 - 0.5), apply(x1 + 0.5, y1 + 0.5)
        lo = np.minimum(a[:2], b[:2]) + 0.5
        hi = np.maximum(a[:2], b[:2]) - 0.5
        hi = np.maximum(hi, lo)  # a box narrower than a target pixel keeps one pixel
        lo = np.clip(lo, 0, [cols - 1, rows - 1])
        hi = np.clip(hi, 0, [cols - 1, rows - 1])
        if (np.minimum(a[:2], b[:2]) > [cols - 0.5, rows - 0.5]).any() or (
            np.maximum(a[:2], b[:2]) < -0.5
        ).any():
            raise ValueError(f"{where}: box {prompt.box} lies outside slice {prompt.slice_index}")
        box = tuple(round(float(v), 6) for v in (lo[0], lo[1], hi[0], hi[1]))
    return Prompt(
        points=points,
        point_labels=list(prompt.point_labels),
        box=box,  # type: ignore[arg-type]
        class_id=prompt.class_id,
        slice_index=index,
        axis=out_axis,
    )


def prompt_to_prepared(prompt: Prompt, prepared: PreparedVolume, *, where: str = "prompt") -> Prompt:
    """A source-voxel prompt as a prompt on the model's slices (display pixels of ``prepared.slice_image``).

    An automatic prompt without ``slice_index`` (every slice) is returned unchanged but for its axis. For a 2-D
    picture, a prompt without ``slice_index``/``axis`` is on its only slice.

    Raises:
        ValueError: the prompt is on another axis than the model's, outside the image, or lacks a slice index.
    """
    if prompt.is_automatic and prompt.slice_index is None:
        return Prompt(class_id=prompt.class_id, axis=prepared.axis)
    if prepared.is_2d and prompt.slice_index is None and prompt.axis is None:
        prompt = Prompt(prompt.points, prompt.point_labels, prompt.box, prompt.class_id, 0, 2)
    axis = source_axis(prepared) if prompt.axis is None else int(prompt.axis)
    t = plane_transform(prepared, axis)
    shape = _shape(prepared)
    u, v = plane_axes(prepared.axis)
    return _map_prompt(prompt, t, shape[prepared.axis], (shape[v], shape[u]), prepared.axis, where)


def prompt_to_source(prompt: Prompt, prepared: PreparedVolume, *, where: str = "prompt") -> Prompt:
    """Inverse of :func:`prompt_to_prepared`: a model-slice prompt in source voxel coordinates (for prompt files)."""
    if prompt.is_automatic and prompt.slice_index is None:
        return Prompt(class_id=prompt.class_id, axis=source_axis(prepared))
    if prompt.axis is not None and int(prompt.axis) != prepared.axis:
        raise ValueError(
            f"{where}: the prompt is on axis {prompt.axis}, the model's slices on {prepared.axis}"
        )
    axis = source_axis(prepared)
    t = plane_transform(prepared, axis, to_source=True)
    shape = prepared.source.shape
    u, v = plane_axes(axis)
    return _map_prompt(prompt, t, int(shape[axis]), (int(shape[v]), int(shape[u])), axis, where)


def prompts_to_prepared(prompts: Iterable[Prompt], prepared: PreparedVolume) -> list[Prompt]:
    """:func:`prompt_to_prepared` over a list; errors name the prompt's position (``prompt #i``)."""
    return [prompt_to_prepared(p, prepared, where=f"prompt #{i}") for i, p in enumerate(prompts)]


def prepared_slice_to_source(prepared: PreparedVolume, index: int) -> int:
    """The source slice index (along :func:`source_axis`) of model slice ``index``."""
    t = plane_transform(prepared, source_axis(prepared), to_source=True)
    return int(np.round((t @ np.array([0.0, 0.0, float(index), 1.0]))[2]))
