"""DICOM-SEG output and input (highdicom): label maps a PACS, 3D Slicer or OHIF reads as segmentations.

A predicted label map of a case read from a DICOM series is written as one Segmentation instance (binary, one
segment per class, named and coloured as in the NIfTI sidecars) that references the series' instances and frame
of reference; frame ``k`` of the label map is the ``k``-th image of the series along the slice normal
(:func:`salt_seg.data.dicom.series_files_in_volume_order`), so per-frame positions are the source images'. The
generating algorithm (salt_seg, its version, the model, adapter and base hash) is recorded in every segment's
algorithm identification. Reading a SEG back (:func:`read_dicom_seg`) gives the label map on the same series'
voxel grid with the segment names, so ``write`` then ``read`` is the identity on label values (a class id that is
not a segment number is kept in the segment's tracking id).

Empty classes are written as segments without frames (highdicom omits empty frames), so the segment list always
names every class of the model.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import salt_seg
from salt_seg.data.archive import safe_extract_zip
from salt_seg.data.dicom import series_files_in_volume_order
from salt_seg.data.errors import DataError
from salt_seg.geometry import LPS_TO_RAS
from salt_seg.io import atomic_path

#: the tracking id of a segment records the label value it was written from
TRACKING_PREFIX = "salt_seg label "
#: Type 2 patient and study attributes a SEG copies from its source; some exported series omit them
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


@contextlib.contextmanager
def series_folder(path: str | Path) -> Iterator[Path]:
    """The folder of a DICOM input (a series folder, or a zip extracted to a temporary folder meanwhile)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="salt-seg-seg-") as tmp:
            safe_extract_zip(path, Path(tmp))
            yield Path(tmp)
    else:
        yield path


def source_datasets(path: str | Path, series: int | str | None = None) -> list[Any]:
    """The pydicom datasets of the series a DICOM input was read from, in the label map's frame order."""
    import pydicom

    with series_folder(path) as folder:
        if folder.is_file():
            return [pydicom.dcmread(folder)]
        return [pydicom.dcmread(f) for f in series_files_in_volume_order(folder, series)]


def _frames(label_map: np.ndarray, n_sources: int, where: Path) -> np.ndarray:
    """``I x J x K`` (column, row, slice; the reader's layout) -> ``K x rows x columns``."""
    if label_map.ndim != 3:
        raise DataError(where, f"a DICOM-SEG needs a 3-D label map, got shape {label_map.shape}")
    if label_map.shape[2] != n_sources:
        raise DataError(
            where, f"the label map has {label_map.shape[2]} slices but the DICOM series {n_sources} images"
        )
    return np.ascontiguousarray(np.transpose(label_map, (2, 1, 0)))


def write_dicom_seg(
    label_map: np.ndarray,
    source: str | Path,
    class_names: Mapping[int, str],
    out_path: str | Path,
    *,
    algorithm: Mapping[str, str] | None = None,
    series: int | str | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
) -> Path:
    """Write ``label_map`` (the predicted ``I x J x K`` class ids in the DICOM input's voxel grid, as written to
    NIfTI) as a DICOM Segmentation of the series it came from, atomically.

    Args:
        label_map: class ids; 0 is background.
        source: the DICOM series folder or zip the prediction was made from.
        class_names: class id -> name: one segment per class, in id order.
        out_path: the ``.dcm`` file to write.
        algorithm: recorded as the algorithm's parameters (e.g. model, adapter, base hash).
        series: the series choice the reader was given (several series in one folder).
        colors: class id -> RGB display colour of its segment (the NIfTI sidecars' palette).

    Raises:
        DataError: not a DICOM series, or a label map that does not match its images.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = Path(source)
    datasets = source_datasets(source, series)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DataError(source, "DICOM-SEG output supports single-frame image series, not multi-frame files")
    for ds in datasets:  # Type 2 attributes the SEG copies: present, possibly empty, in valid files
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    frames = _frames(np.asarray(label_map), len(datasets), source)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if frames.shape[1:] != (rows, cols):
        raise DataError(source, f"the label map's slices are {frames.shape[1:]}, the images {(rows, cols)}")
    ids = sorted(int(k) for k in class_names)
    unknown = sorted(set(np.unique(frames).tolist()) - {0, *ids})
    if unknown:
        raise ValueError(f"label values {unknown} have no class name")
    params = {str(k): str(v) for k, v in (algorithm or {}).items() if v is not None}
    ident = hd.AlgorithmIdentificationSequence(
        name="salt_seg",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(getattr(salt_seg, "__version__", "0")),
        parameters=params or None,
    )
    descriptions = []
    masks = np.zeros((*frames.shape, len(ids)), dtype=bool)
    for n, cid in enumerate(ids, start=1):
        masks[..., n - 1] = frames == cid
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=str(class_names[cid])[:64],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=ident,
                tracking_uid=hd.UID(),
                tracking_id=f"{TRACKING_PREFIX}{cid}",
                display_color=hd.color.CIELabColor.from_rgb(*colors[cid])
                if colors and cid in colors
                else None,
            )
        )
    try:
        seg = _segmentation(hd, datasets, masks, descriptions, params)
    except (ValueError, AttributeError) as exc:  # highdicom's checks of the source images
        raise DataError(source, f"cannot make a DICOM-SEG of this series: {exc}") from None
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return out_path


def _segmentation(
    hd: Any, datasets: list[Any], masks: np.ndarray, descriptions: list[Any], params: dict
) -> Any:

    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="salt_seg",
        manufacturer_model_name=str(params.get("model", "salt_seg"))[:64],
        software_versions=str(getattr(salt_seg, "__version__", "0")),
        device_serial_number="0",
        series_description="salt_seg segmentation",
        content_label="SALT_SEG",
        content_description="Automatic segmentation (research use only)",
    )


def dicom_modality(path: str | Path) -> str | None:
    """The Modality of a DICOM file (``SEG``, ``RTSTRUCT``, ``CT``, ...), or ``None`` when it is not DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - not DICOM at all
        return None
    return str(ds.get("Modality", "")) or None


def is_dicom_seg(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM Segmentation instance (reads the header only)."""
    return dicom_modality(path) == "SEG"


def segment_names(seg_path: str | Path) -> dict[int, str]:
    """``{label value: segment name}`` of a DICOM-SEG (values as :func:`read_dicom_seg` gives them).

    Raises:
        DataError: not a readable Segmentation.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
        items = list(ds.SegmentSequence)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for foreign files
        raise DataError(seg_path, f"not a readable DICOM Segmentation ({type(exc).__name__})") from None
    names = {}
    for item in items:
        tracking = str(item.get("TrackingID", "") or "")
        number = int(item.SegmentNumber)
        value = int(tracking[len(TRACKING_PREFIX) :]) if tracking.startswith(TRACKING_PREFIX) else number
        names[value] = str(item.get("SegmentLabel", f"segment {number}"))
    return dict(sorted(names.items()))


def read_dicom_seg(seg_path: str | Path, like: Any):  # -> tuple[np.ndarray, dict[int, str]]
    """A DICOM-SEG as a label map on the voxel grid of the image volume ``like`` (a
    :class:`~salt_seg.data.volume.Volume` read from the series), with ``{value: segment name}``.

    Every labelled voxel of the SEG is placed by its position in the patient frame, so the SEG's frame order,
    omitted empty frames and the series' file order do not matter; a SEG on another grid is an error. Segments
    written by :func:`write_dicom_seg` come back with their original label values; other SEGs' segments get
    their segment numbers. Where segments overlap, the higher value wins.

    Raises:
        DataError: not a readable Segmentation, or voxels that are not on ``like``'s grid.
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
        numbers = [int(n) for n in seg.segment_numbers]
        names: dict[int, str] = {}
        value_of: dict[int, int] = {}
        for number in numbers:
            desc = seg.get_segment_description(number)
            tracking = str(getattr(desc, "tracking_id", "") or "")
            value = int(tracking[len(TRACKING_PREFIX) :]) if tracking.startswith(TRACKING_PREFIX) else number
            value_of[number], names[value] = value, str(desc.segment_label)
        out = np.zeros(like.shape, dtype=np.int16)
        if seg.number_of_frames == 0:
            return out, dict(sorted(names.items()))
        vol = seg.get_volume(segment_numbers=numbers, combine_segments=False)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many types for foreign files
        raise DataError(
            seg_path, f"not a readable DICOM Segmentation ({type(exc).__name__}: {exc})"
        ) from None
    array = np.asarray(vol.array)  # slices x rows x columns x segments
    to_voxel = np.linalg.inv(np.asarray(like.affine, dtype=np.float64)) @ LPS_TO_RAS @ np.asarray(vol.affine)
    for j, number in sorted(enumerate(numbers), key=lambda jn: value_of[jn[1]]):  # higher values last
        idx = np.argwhere(array[..., j] > 0)  # (slice, row, column) indices of the SEG volume
        if idx.size == 0:
            continue
        ijk = to_voxel[:3, :3] @ idx.T.astype(np.float64) + to_voxel[:3, 3:4]
        rounded = np.rint(ijk)
        if np.abs(ijk - rounded).max() > 1e-3:
            raise DataError(seg_path, "the segmentation's voxels are not on the image series' grid")
        rounded = rounded.astype(np.int64)
        if (rounded < 0).any() or (rounded >= np.asarray(like.shape)[:, None]).any():
            raise DataError(seg_path, "the segmentation reaches outside the image series")
        out[rounded[0], rounded[1], rounded[2]] = value_of[number]
    return out, dict(sorted(names.items()))
