"""Volume-wide actions of a viewer session, each a thin use of the library.

* :func:`auto_slice` -- class tokens on the viewed slice, with the keep rule and overlap policy of
  :mod:`salt_seg.inference.segment` (:class:`~salt_seg.inference.segment.LabelAccumulator`);
* :func:`auto_volume` -- :func:`salt_seg.inference.segment_volume` in ``auto`` mode (class tokens);
* :func:`propagate` -- :func:`salt_seg.inference.propagation.propagate_many` seeded with the box of each label on
  the viewed slice;
* :func:`export` -- the label map back on the file's own grid (:meth:`~salt_seg.data.volume.Geometry.from_ras`),
  written by :func:`salt_seg.inference.write_label_map` with the source NIfTI header
  (:func:`salt_seg.inference.read_source_header`) and the JSON sidecar, as ``salt-seg predict`` writes them; for a
  volume read from a DICOM series also as a DICOM Segmentation (:func:`salt_seg.data.dicom_seg.write_dicom_seg`) or
  an RT Structure Set (:func:`salt_seg.data.rtstruct.write_rtstruct`) of that series, as ``predict --format`` does;
* :func:`save_prompts` / :func:`load_prompts` -- the project's prompt file in source voxel coordinates
  (:func:`salt_seg.inference.prompt_to_source` / :func:`~salt_seg.inference.prompt_to_prepared`);
* :func:`load_label_map` -- :func:`salt_seg.data.load_label` checked against the open volume, with the names and
  colours of its JSON sidecar when one comes with it (:func:`salt_seg.inference.sidecars.read_label_json`); a
  DICOM-SEG or RTSTRUCT is placed onto the open series' grid by the dataset readers, its segment / ROI names
  (:func:`salt_seg.data.dicom_seg.segment_names`, :func:`salt_seg.data.rtstruct.roi_names`) become the label names.

Each is one undoable action (:meth:`ViewerSession.action`): Undo takes back the whole of it, and a failure part-way
leaves the labels as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salt_seg.data.dicom_seg import dicom_modality
from salt_seg.data.labels import load_label
from salt_seg.data.volume import extract_slice, insert_slice, slice_shape
from salt_seg.inference.coords import prompt_to_prepared, prompt_to_source, source_axis
from salt_seg.inference.export import read_source_header, write_label_map
from salt_seg.inference.outputs import DICOM_FORMATS, algorithm_record
from salt_seg.inference.propagation import box_from_mask, propagate_many
from salt_seg.inference.segment import LabelAccumulator, keep_class_token_mask, segment_volume
from salt_seg.inference.sidecars import read_label_json, write_label_json
from salt_seg.inference.summary import structure_stats
from salt_seg.prompts import Prompt
from salt_seg.prompts import load_prompts as read_prompt_file
from salt_seg.prompts import save_prompts as write_prompt_file
from salt_seg_apps.viewer.session import Progress, ViewerSession


def _noop(fraction: float, desc: str) -> None:  # noqa: ARG001
    return None


def auto_slice(session: ViewerSession) -> str:
    """Automatic segmentation of the viewed slice with the model's class tokens (library keep rules)."""
    engine = session.require_engine()
    classes = engine.token_classes
    if not classes:
        raise ValueError("this model has no trained class tokens; place points or a box instead")
    a, i = session.axis, session.slice_index
    outs = engine.decode(a, [(i, Prompt(class_id=c, slice_index=i, axis=a)) for c in classes])
    rows, cols = slice_shape(session.require_volume().shape, a)
    shape = [0, 0, 0]
    u, v = (d for d in range(3) if d != a)
    shape[a], shape[u], shape[v] = 1, cols, rows
    acc = LabelAccumulator(tuple(shape), a, classes)  # type: ignore[arg-type]
    s = session.settings
    found = []
    for c, out in zip(classes, outs, strict=True):
        if keep_class_token_mask(out, s):  # the library's rule, as salt-seg predict applies it
            acc.add(c, 0, out.probabilities)
            found.append(session.label_set.names.get(c, str(c)))
    result = extract_slice(acc.label_map(), a, 0)
    lab = session.label_slice()
    lab[np.isin(lab, classes)] = 0
    keep = (result > 0) & (lab == 0)
    lab[keep] = result[keep]
    session.edit_slice(lab, name="automatic (slice)")
    return f"automatic: {', '.join(found) if found else 'no structure'} on this slice"


def auto_volume(session: ViewerSession, progress: Progress = _noop) -> str:
    """Segment every slice along the viewed axis with the model's class tokens; those classes are replaced."""
    engine = session.require_engine()
    classes = engine.token_classes
    if not classes:
        raise ValueError("this model has no trained class tokens; place points or a box instead")
    prepared = engine.prepared(session.axis)
    progress(0.0, "automatic segmentation")
    with engine.lock:
        result = segment_volume(
            engine.predictor,
            prepared.record,
            prepared,
            mode="auto",
            settings=session.settings,
            progress=True,  # tqdm, which the Gradio progress bar tracks
            desc="automatic segmentation",
        )
    assert session.labels is not None
    new = session.labels.copy()
    new[np.isin(new, classes)] = 0
    keep = (result.label_map > 0) & (new == 0)
    new[keep] = result.label_map[keep]
    n = session.replace_labels(new, name="automatic segmentation")
    found = [session.label_set.names.get(c, str(c)) for c in classes if result.kept[c].any()]
    progress(1.0, "done")
    return f"automatic segmentation: {', '.join(found) or 'no structure'} ({n} slice(s) changed)"


def propagate(session: ViewerSession, progress: Progress = _noop) -> str:
    """Carry every label on the viewed slice through the volume (MedSAM box propagation, library stop rules).

    Each label's seed is the bounding box of its mask on the viewed slice; the viewed slice itself is kept as it
    is, the slices the propagation keeps get that label (replacing it there, never overwriting other labels).
    """
    engine = session.require_prompt_engine()
    a, k = session.axis, session.slice_index
    current = session.label_slice()
    classes = [int(c) for c in np.unique(current) if c]
    if not classes:
        raise ValueError("nothing to propagate: segment a structure on this slice first")
    seeds = [Prompt(box=box_from_mask(current == c), class_id=c, slice_index=k, axis=a) for c in classes]
    total = max(1, session.n_slices * len(seeds))
    done = [0]

    def on_decoded(n: int) -> None:
        done[0] += n
        progress(min(done[0] / total, 0.99), f"propagating ({done[0]} slice decodes)")

    progress(0.0, "propagating")
    with engine.lock:
        results = propagate_many(
            engine.backend(a), seeds, session.settings.propagation, on_decoded=on_decoded
        )
    assert session.labels is not None
    new = session.labels.copy()
    parts = []
    for res in results:
        c = res.prompt.class_id
        kept = [i for i in res.slices if i != k]
        for i in kept:
            lab = np.array(extract_slice(new, a, i))
            lab[lab == c] = 0
            lab[res.mask(i) & (lab == 0)] = c
            insert_slice(new, a, i, lab)
        span = f"{min(res.slices)}-{max(res.slices)}" if res.slices else "none"
        stops = ", ".join(f"{d}: {r}" for d, r in sorted(res.stopped.items()))
        parts.append(f"{session.label_set.names.get(c, str(c))} slices {span} ({stops})")
    session.replace_labels(new, name="propagation")
    progress(1.0, "done")
    return "propagated " + "; ".join(parts)


#: the viewer's export choices: shown name -> ``salt-seg predict --format`` value
EXPORT_FORMATS = {"NIfTI": "nifti", "DICOM-SEG": "dicom-seg", "RTSTRUCT": "rtstruct"}


def dicom_source(session: ViewerSession) -> tuple[Path, str | None]:
    """The DICOM series folder (or file) the open volume was read from, and its series key.

    Raises:
        ValueError: the volume did not come from a DICOM series (a NIfTI file, say), or its files are gone.
    """
    session.require_volume()
    assert session.volume is not None
    meta = session.volume.meta
    if session.dicom_source is None:
        kind = str(meta.get("format") or "non-DICOM")
        raise ValueError(
            f"{session.volume.name}: DICOM-SEG and RTSTRUCT export need a volume opened from a DICOM series; this "
            f"one is a {kind} image: export NIfTI"
        )
    if not session.dicom_source.exists():
        raise ValueError(
            f"{session.volume.name}: the DICOM files of this series are gone from the server; open it again"
        )
    key = meta.get("series_key")
    return session.dicom_source, str(key) if key else None


def export(session: ViewerSession, out_dir: str | Path | None = None, fmt: str = "nifti") -> list[Path]:
    """Write the label map in the source geometry and its JSON sidecar; returns ``[label file, sidecar]``.

    ``fmt``: ``nifti`` (the default), or for a volume read from a DICOM series ``dicom-seg`` (a DICOM Segmentation
    of that series, one named segment per label) or ``rtstruct`` (an RT Structure Set, one ROI per non-empty
    label) -- the writers of ``salt-seg predict --format``. Each file is written atomically; the DICOM file first,
    so a series the writer refuses leaves nothing written.

    Raises:
        ValueError: an unknown ``fmt``, a DICOM ``fmt`` for a volume not read from DICOM, an empty label map for a
            DICOM ``fmt``.
        DataError: the DICOM writer's checks of the series.
    """
    if fmt not in EXPORT_FORMATS.values():
        raise ValueError(f"export format {fmt!r} is not one of {list(EXPORT_FORMATS.values())}")
    session.require_volume()
    assert session.volume is not None and session.labels is not None
    source = dicom_source(session) if fmt != "nifti" else None
    out = Path(out_dir) if out_dir is not None else session.workdir / "export"
    out.mkdir(parents=True, exist_ok=True)
    geometry = session.volume.geometry
    labels = geometry.from_ras(session.labels)
    names = dict(session.label_set.names)
    names.update({int(i): f"label {i}" for i in np.unique(labels) if i and int(i) not in names})
    stem = f"{session.volume.name}_labels"
    if source is None:
        header = read_source_header(session.source_path) if session.source_path is not None else None
        first = write_label_map(
            out / f"{stem}.nii.gz", labels, geometry, names, header=header, overwrite=True
        )
    else:
        if not labels.any():
            raise ValueError(f"nothing to export as {fmt}: the label map is empty")
        first = out / f"{stem}{DICOM_FORMATS[fmt][1]}"
        colors = session.label_set.colours()
        folder, series = source
        if fmt == "dicom-seg":
            from salt_seg.data.dicom_seg import write_dicom_seg

            meta = session.registry.get(session.model_name).meta if session.engine is not None else {}
            write_dicom_seg(
                labels, folder, names, first, algorithm=algorithm_record(meta), series=series, colors=colors
            )
        else:
            from salt_seg.data.dicom import list_dicom_series
            from salt_seg.data.rtstruct import write_rtstruct

            if folder.is_dir() and len(list_dicom_series(folder)) > 1:
                raise ValueError(
                    f"{session.volume.name}: RTSTRUCT export needs a folder holding this series alone (the upload "
                    "holds several); export DICOM-SEG, or upload this series by itself"
                )
            try:
                write_rtstruct(labels, folder, names, first, colors=colors)
            except ImportError as exc:  # the rtstruct extra is missing: a user-facing line, not a crash
                raise ValueError(str(exc)) from None
    side = write_label_json(
        out / f"{stem}.json",
        names,
        overwrite=True,
        colors=session.label_set.colors,
        case=session.volume.name,
        summary={"structures": structure_stats(labels, geometry, names)},
    )
    session.unsaved = False
    return [first, side]


def _referenced_series(path: Path, modality: str) -> list[str]:
    """The Series Instance UIDs a DICOM-SEG or RTSTRUCT says it was drawn on (empty when it does not say)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if modality == "SEG":
        return [str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])]
    return [
        str(series.SeriesInstanceUID)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    ]


def _dicom_label_names(session: ViewerSession, path: Path) -> dict[int, str]:
    """For a DICOM-SEG or RTSTRUCT: checked to be of the open series, its ``{label value: segment name}``;
    for any other file ``{}``.

    Raises:
        ValueError: the file references another series than the open one.
    """
    from salt_seg.data.readers import file_kind

    modality = dicom_modality(path) if file_kind(path) == "dicom" else None
    if modality not in ("SEG", "RTSTRUCT"):
        return {}
    assert session.volume is not None
    from salt_seg.data.dicom import series_key

    open_key = session.volume.meta.get("series_key")
    refs = sorted({series_key(u) for u in _referenced_series(path, modality)})
    if open_key and refs and open_key not in refs:
        kind = "DICOM-SEG" if modality == "SEG" else "RTSTRUCT"
        raise ValueError(
            f"{path.name}: this {kind} was drawn on series {', '.join(refs)}, not on the open series {open_key}; "
            "open its series first"
        )
    if modality == "SEG":
        from salt_seg.data.dicom_seg import segment_names

        return segment_names(path)
    from salt_seg.data.rtstruct import roi_names

    return roi_names(path)


def load_label_map(session: ViewerSession, path: str | Path, sidecar: str | Path | None = None) -> str:
    """Load a label map (ground truth or an earlier export) on the open volume's grid, replacing the current one.

    A DICOM-SEG or RTSTRUCT (by its Modality) must reference the open series when it says which it was drawn on;
    :func:`salt_seg.data.load_label` places it onto the series' voxel grid and its segment / ROI names become the
    label names (a sidecar's names, when given, win).

    ``sidecar``: its JSON sidecar (what :func:`export` writes beside it); its names and colours replace those of
    the ids it lists. Everything is checked before anything changes; the load is one undoable action.
    """
    session.require_volume()
    assert session.volume is not None and session.ras is not None
    dicom_names = _dicom_label_names(session, Path(path))
    names, colors = read_label_json(sidecar) if sidecar is not None else ({}, {})
    names = {**dicom_names, **names}
    try:
        label = load_label(path, like=session.volume).to_ras()
    except ImportError as exc:  # an RTSTRUCT without the rtstruct extra (OpenCV)
        raise ValueError(str(exc)) from None
    if label.shape != session.ras.shape:
        raise ValueError(
            f"{Path(path).name}: label grid {label.shape} differs from the image {session.ras.shape}"
        )
    arr = np.asarray(label.array[0])
    if arr.max(initial=0) > 65535:
        raise ValueError(f"{Path(path).name}: label ids above 65535")
    ids = [int(i) for i in np.unique(arr) if i]
    with session.action(f"load {Path(path).name}", names=True):
        session.label_set.ensure(ids)
        session.label_set.names.update(names)
        session.label_set.names = dict(sorted(session.label_set.names.items()))
        session.label_set.colors.update(colors)
        n = session.replace_labels(arr.astype(np.uint16))
    session.unsaved = False  # what is shown is what the file holds
    listed = ", ".join(f"{i} {session.label_set.names[i]}" for i in ids) if ids else "none"
    named = f" (names from {Path(sidecar).name})" if sidecar is not None else ""
    named = named or (" (segment names kept)" if dicom_names else "")
    return f"loaded label map {Path(path).name}{named}: labels {listed} ({n} slice(s) changed)"


def save_prompts(session: ViewerSession, path: str | Path | None = None) -> Path:
    """Write every placed prompt as the project's prompt file (source voxel coordinates)."""
    engine = session.require_prompt_engine()
    assert session.volume is not None
    prompts = session.prompts.all()
    if not prompts:
        raise ValueError("no prompts to save: place points or boxes first")
    src = [
        prompt_to_source(p, engine.prepared(int(p.axis)), where=f"prompt #{n}") for n, p in enumerate(prompts)
    ]  # type: ignore[arg-type]
    out = (
        Path(path) if path is not None else session.workdir / "export" / f"{session.volume.name}_prompts.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = {str(k): v for k, v in session.label_set.names.items()}
    write_prompt_file(out, src, extra={"image": session.volume.name, "labels": labels})
    return out


def load_prompts(session: ViewerSession, path: str | Path) -> str:
    """Read a prompt file (voxel or world coordinates), place its prompts and segment each prompted slice."""
    engine = session.require_prompt_engine()
    assert session.volume is not None
    axis_of = {source_axis(engine.prepared(a)): a for a in ((2,) if session.volume.is_2d else (0, 1, 2))}
    default = source_axis(engine.prepared(session.axis))
    prompts, meta = read_prompt_file(path, affine=session.volume.affine, default_axis=default)
    with session.action(f"load {Path(path).name}", names=True):
        placed, skipped = _place_prompts(session, prompts, meta, axis_of, default, Path(path).name)
    note = f"; {skipped} class-token prompt(s) skipped (use automatic segmentation)" if skipped else ""
    return f"loaded {len(placed)} prompt(s) from {Path(path).name}{note}"


def _place_prompts(
    session: ViewerSession,
    prompts: list[Prompt],
    meta: dict,
    axis_of: dict[int, int],
    default: int,
    name: str,
) -> tuple[list[Prompt], int]:
    """Names from the file's ``labels``, then each prompt placed and segmented; returns (placed, skipped)."""
    engine = session.require_prompt_engine()
    names = meta.get("labels")
    if isinstance(names, dict):
        for k, v in names.items():
            if str(k).isdigit() and int(k) > 0:
                session.label_set.names[int(k)] = str(v)
        session.label_set.names = dict(sorted(session.label_set.names.items()))
    placed: list[Prompt] = []
    skipped = 0
    for n, p in enumerate(prompts):
        if p.is_automatic:
            skipped += 1
            continue
        a = axis_of.get(int(p.axis if p.axis is not None else default))
        if a is None:
            raise ValueError(f"{name}: prompt #{n} is on source axis {p.axis}, which this volume lacks")
        placed.append(prompt_to_prepared(p, engine.prepared(a), where=f"{name}: prompt #{n}"))
    session.label_set.ensure(p.class_id for p in placed)
    for p in placed:  # points add to what is there; the whole file is one undoable action
        have = session.prompts.get(int(p.axis), int(p.slice_index), p.class_id)  # type: ignore[arg-type]
        session.apply_prompt(
            Prompt(
                [*have.points, *p.points],
                [*have.point_labels, *p.point_labels],
                p.box if p.box is not None else have.box,
                p.class_id,
                p.slice_index,
                p.axis,
            )
        )
    return placed, skipped
