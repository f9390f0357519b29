"""Event handlers: functions of a :class:`~salt_seg_apps.viewer.session.ViewerSession` and one UI event.

Each handler returns a dict of named updates (``image``, ``slice``, ``info``, ``cursor``, ``volumes``, ``status``,
``series``, ``labels``, ``window``, ...); :mod:`salt_seg_apps.viewer.app` maps the names onto components. They never
raise for user mistakes: :func:`guarded` turns an error into a readable ``status`` line and the page keeps
working. Tests call them directly (``gr.SelectData(None, {"index": [x, y], "value": None})`` for clicks).
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.data.errors import DataError
from salt_seg_apps.viewer import actions
from salt_seg_apps.viewer.session import AXIS_NAMES, PRESETS, TOOLS, Progress, ViewerSession, nice
from salt_seg_apps.viewer.uploads import (
    Staged,
    UploadPolicy,
    check_uploaded,
    discard_upload,
    load_staged,
    stage_upload,
    take_uploads,
)

log = logging.getLogger(__name__)

Updates = dict[str, Any]
VIEW_NAMES = {"Axial": 2, "Coronal": 1, "Sagittal": 0}
PRESET_NAMES = {
    "auto": "Automatic (0.5-99.5 %)",
    "soft_tissue": "CT soft tissue",
    "lung": "CT lung",
    "bone": "CT bone",
    "brain": "CT brain",
}
USER_ERRORS = (DataError, ValueError, FileNotFoundError, RuntimeError, IndexError)


#: an absolute path of two or more parts inside a message (a server path: only its last part is shown).
_SERVER_PATH = re.compile(r"(?<![\w.~])(?:/[^\s'\"`,;()\[\]<>]+){2,}")
#: the folders an upload is staged in (``upload-3``, ``incoming-2``) and the index prefix of several files.
_STAGING = re.compile(r"\b(?:upload|incoming)-\d+\b")
_INDEX_PREFIX = re.compile(r"^\d{5}_")


def user_facing(text: str, upload_name: str = "") -> str:
    """``text`` without server paths: a path becomes its file name, a staging folder the upload's name."""
    text = _SERVER_PATH.sub(lambda m: _INDEX_PREFIX.sub("", Path(m.group(0)).name), text)
    return _STAGING.sub(upload_name or "the upload", text)


def error_text(exc: BaseException, upload_name: str = "") -> str:
    """One readable line; a :class:`DataError` names the file, never the server folder it sits in."""
    if isinstance(exc, DataError):
        name = _INDEX_PREFIX.sub("", exc.path.name) if exc.path is not None else ""
        text = f"{name}: {exc.problem}" if name else exc.problem
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return user_facing(text, upload_name)


def guarded(fn: Callable[..., Updates]) -> Callable[..., Updates]:
    """Run a handler; a user error becomes ``status`` (plus a fresh view), anything else is logged too."""

    @functools.wraps(fn)
    def run(session: ViewerSession, *args: Any, **kwargs: Any) -> Updates:
        try:
            return fn(session, *args, **kwargs)
        except USER_ERRORS as exc:
            out = view(session)
            out["status"] = f"⚠️ {error_text(exc, session.upload_name)}"
            return out
        except Exception as exc:  # noqa: BLE001 - the page must survive a bug; the log keeps the traceback
            log.exception("viewer handler %s failed", fn.__name__)
            out = view(session)
            out["status"] = (
                f"⚠️ internal error ({type(exc).__name__}: {error_text(exc, session.upload_name)}); "
                "the viewer is still usable"
            )
            return out

    return run


# --- what the page shows ---------------------------------------------------------------------------------------
def info_text(session: ViewerSession) -> str:
    """Volume and view facts: name, modality, grid, spacing, slice, window, model."""
    if session.volume is None or session.ras is None:
        return "No volume open. Upload a NIfTI file, a DICOM zip or several DICOM files."
    v, r = session.volume, session.ras
    sp = " × ".join(f"{s:.3g}" for s in v.spacing)
    dx, dy = session.spacing_xy
    unit = " HU" if session.modality == "CT" else ""
    model = session.model_name if session.engine is not None else f"none ({session.engine_error})"
    return (
        f"**{v.name}** · {session.modality} · stored {v.axcodes}, shown RAS (radiological: patient right on the "
        f"left) · {' × '.join(str(s) for s in v.shape)} voxels · spacing {sp} mm  \n"
        f"**{AXIS_NAMES[session.axis]}** slice **{session.slice_index}** of 0–{session.n_slices - 1} · pixel "
        f"{dx:.3g} × {dy:.3g} mm · window L {session.level:.4g} / W {session.width:.4g}{unit} "
        f"({PRESET_NAMES.get(session.preset, session.preset)})  \n"
        f"model: {model} · label map {r.shape[0]}×{r.shape[1]}×{r.shape[2]}"
    )


def volumes_table(session: ViewerSession) -> str:
    """The label panel (HTML): per label a colour swatch, id, name, voxels, volume in mL, and buttons to make it
    active and to show or hide it (the page's script sends their ``data-cmd``, see :func:`on_command`)."""
    stats = session.volumes()
    if not stats:
        return ""
    ls = session.label_set
    colours = ls.colours()
    rows = []
    for cid, st in stats.items():
        i = int(cid)
        r, g, b = colours.get(i, (255, 255, 255))
        active = i == ls.active
        shown = i not in ls.hidden
        rows.append(
            f'<tr class="{"active" if active else ""}" data-label="{i}">'
            f'<td><span class="swatch" style="background:rgb({r},{g},{b})"></span></td>'
            f'<td>{i}</td><td><button class="lp-name" data-cmd="select:{i}" title="make active">'
            f"{html.escape(st['name'])}{' ✎' if active else ''}</button></td>"
            f"<td class=num>{st['voxels']}</td><td class=num>{st['volume_ml']:.3f}</td>"
            f'<td><button class="lp-eye" data-cmd="toggle:{i}" aria-label="{"hide" if shown else "show"} '
            f'{html.escape(st["name"])}">{"shown" if shown else "hidden"}</button></td></tr>'
        )
    return (
        '<table class="label-panel"><thead><tr><th></th><th>id</th><th>label</th><th>voxels</th><th>mL</th>'
        "<th>view</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def view(session: ViewerSession) -> Updates:
    """The image and the text around it."""
    out: Updates = {
        "image": session.render(),
        "info": info_text(session),
        "cursor": session.cursor,
        "volumes": volumes_table(session),
    }
    if session.has_volume:
        out["slice"] = {"maximum": session.n_slices - 1, "value": session.slice_index}
    return out


def controls(session: ViewerSession) -> Updates:
    """Control values that follow the session (after opening a volume or loading files)."""
    out: Updates = {
        "labels": {"choices": session.label_set.choices(), "value": session.label_set.active},
        "view_axis": next(k for k, a in VIEW_NAMES.items() if a == session.axis),
    }
    if session.has_volume:
        lo, hi = session.value_range()
        step = window_step(hi - lo)
        out["level"] = {"minimum": nice(lo), "maximum": nice(hi), "value": nice(session.level), "step": step}
        out["width"] = {
            "minimum": step,
            "maximum": nice(max(hi - lo, 1.0) * 2),
            "value": nice(session.width),
            "step": step,
        }
        out["preset"] = session.preset if session.preset in PRESETS else None
    return out


def window_step(value_range: float) -> float:
    """Slider step for level and width: 1 for CT-like ranges, a power of ten about 1/1000 of smaller ranges."""
    if value_range >= 1000:
        return 1.0
    return float(10.0 ** np.floor(np.log10(max(value_range, 1e-6) / 1000)))


def model_note(session: ViewerSession) -> str:
    """Which model answers which prompts (shown under the model picker)."""
    return session.model_roles()


def full_view(session: ViewerSession, status: str) -> Updates:
    """The view, every control that follows the session, and a status line."""
    return {**view(session), **controls(session), "model_note": model_note(session), "status": status}


# --- opening -------------------------------------------------------------------------------------------------------
@guarded
def on_upload(session: ViewerSession, files: list[str] | str | None, policy: UploadPolicy) -> Updates:
    """Stage the uploaded files; open the volume, or ask for a series when there are several."""
    if not files:
        return {"status": "no file"}
    paths = [Path(f) for f in ([files] if isinstance(files, str) else list(files)) if f]
    session.upload_name = paths[0].name if len(paths) == 1 else f"{len(paths)} files"
    # out of Gradio's upload folder (which it serves) into the session's own, before anything is read
    local = take_uploads(paths, session.workdir, policy)
    staged = stage_upload(local, session.workdir, replace(policy, roots=[session.workdir]))
    return {**_open_staged(session, staged, policy), "upload": None}  # the next upload starts afresh


def _open_staged(
    session: ViewerSession,
    staged: Staged,
    policy: UploadPolicy,
    series: int | None = None,
    *,
    confirmed: bool = False,
) -> Updates:
    """Open ``staged`` (``series``: the chosen DICOM series): ask for a series first when there are several, and
    ask before labels that were not exported are replaced (:func:`on_confirm_open` then opens it)."""
    if staged.needs_choice and series is None:
        session.staged = staged
        return {
            "series": {"choices": staged.series_choices(), "value": 0, "visible": True},
            "status": f"{staged.name} holds {len(staged.series)} series: choose one and press “Open series”",
        }
    if session.has_unsaved_labels and not confirmed:
        session.pending = (staged, series)
        n = int(np.count_nonzero(session.labels))
        name = session.volume.name if session.volume is not None else "this volume"
        return {
            "confirm": {"visible": True},
            "status": (
                f"⚠️ {name} has {n} labelled voxel(s) not exported: export them first, or press “Discard labels and "
                f"open {staged.name}”"
            ),
        }
    vol = load_staged(staged, series, max_voxels=policy.max_voxels)
    session.open(vol, staged.source_path, dicom_source=staged.path)
    session.staged = session.pending = None
    return {
        **full_view(session, opened_message(session)),
        "series": {"choices": [], "value": None, "visible": False},
        "confirm": {"visible": False},
    }


@guarded
def on_confirm_open(session: ViewerSession, policy: UploadPolicy) -> Updates:
    """Open the volume that waited for the user's answer, discarding the labels."""
    pending = session.pending
    if pending is None:
        return {"confirm": {"visible": False}, "status": "nothing waits to be opened"}
    staged, series = pending
    return _open_staged(session, staged, policy, series, confirmed=True)


@guarded
def on_cancel_open(session: ViewerSession) -> Updates:
    """Keep the open volume and its labels; forget the volume that waited."""
    pending, session.pending = session.pending, None
    name = pending[0].name if pending is not None else "the new volume"
    return {"confirm": {"visible": False}, "status": f"kept your labels; {name} was not opened"}


def opened_message(session: ViewerSession) -> str:
    """``opened NAME`` (and why the model is unavailable, if it is)."""
    assert session.volume is not None
    note = f" · model unavailable: {session.engine_error}" if session.engine_error else ""
    return f"opened {session.volume.name}{note}"


@guarded
def on_open_series(session: ViewerSession, index: int | None, policy: UploadPolicy) -> Updates:
    staged = getattr(session, "staged", None)
    if staged is None:
        raise RuntimeError("no series to choose from: upload a DICOM zip or files first")
    if index is None:
        raise ValueError("choose a series first")
    return _open_staged(session, staged, policy, int(index))


@guarded
def on_open_path(session: ViewerSession, staged: Staged | None, policy: UploadPolicy) -> Updates:
    """Open the volume given on the command line (already staged by the app)."""
    if staged is None or session.has_volume:
        return full_view(session, "")
    return _open_staged(session, staged, policy)


# --- navigation and display ------------------------------------------------------------------------------------------
@guarded
def on_slice(session: ViewerSession, index: float) -> Updates:
    session.set_slice(int(index))
    return {**view(session), "status": ""}


@guarded
def on_step(session: ViewerSession, delta: int) -> Updates:
    session.step(delta)
    return {**view(session), "status": ""}


@guarded
def on_axis(session: ViewerSession, name: str) -> Updates:
    if name not in VIEW_NAMES:
        raise ValueError(f"unknown view {name!r}; views: {list(VIEW_NAMES)}")
    session.set_axis(VIEW_NAMES[name])
    return {**view(session), "status": ""}


@guarded
def on_preset(session: ViewerSession, name: str) -> Updates:
    session.set_preset(name)
    return full_view(session, "")


@guarded
def on_window(session: ViewerSession, level: float, width: float) -> Updates:
    session.set_window(level, width)
    return {**view(session), "status": ""}


@guarded
def on_opacity(session: ViewerSession, opacity: float) -> Updates:
    session.opacity = float(np.clip(opacity, 0.0, 1.0))
    return {**view(session), "status": ""}


@guarded
def on_tool(session: ViewerSession, tool: str) -> Updates:
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; tools: {list(TOOLS)}")
    session.tool = tool
    session.prompts.corner = None
    return {**view(session), "status": f"tool: {tool}"}


@guarded
def on_brush(session: ViewerSession, radius: float) -> Updates:
    session.brush_radius = max(0, int(radius))
    return {"status": f"brush radius {session.brush_radius} px"}


@guarded
def on_label(session: ViewerSession, label_id: int) -> Updates:
    session.label_set.select(int(label_id))
    session.prompts.corner = None
    return {**view(session), "status": f"active label: {session.label_set.names[int(label_id)]}"}


@guarded
def on_add_label(session: ViewerSession, name: str) -> Updates:
    new = session.add_label(name)
    return full_view(session, f"added label {new}: {session.label_set.names[new]}")


@guarded
def on_model(session: ViewerSession, name: str) -> Updates:
    session.set_model(name)
    status = (
        f"model: {name}"
        if session.engine is not None or not session.has_volume
        else str(session.engine_error)
    )
    return full_view(session, status)


@guarded
def on_rename_label(session: ViewerSession, name: str) -> Updates:
    """Rename the active label."""
    msg = session.rename_label(session.label_set.active, name)
    return {**full_view(session, msg), "new_label": ""}


@guarded
def on_delete_label(session: ViewerSession) -> Updates:
    """Delete the active label: its voxels, prompts and name (one undoable action)."""
    session.require_volume()
    return full_view(session, session.delete_label(session.label_set.active))


def _labels_update(session: ViewerSession) -> Updates:
    return {"labels": {"choices": session.label_set.choices(), "value": session.label_set.active}}


@guarded
def on_command(session: ViewerSession, text: str) -> Updates:
    """A command from the page's script (mouse wheel, label panel, brush drags): ``step:N`` (slices),
    ``select:ID`` and ``toggle:ID`` (labels), ``stroke:X,Y;X,Y;...`` (a brush or eraser drag, display pixels)."""
    verb, _, arg = str(text or "").partition(":")
    if verb == "step":
        session.step(int(arg))
        return {**view(session), "status": ""}
    if verb == "select":
        session.label_set.select(int(arg))
        session.prompts.corner = None
        name = session.label_set.names[int(arg)]
        return {**view(session), **_labels_update(session), "status": f"active label: {name}"}
    if verb == "toggle":
        shown = session.label_set.toggle(int(arg))
        name = session.label_set.names[int(arg)]
        return {**view(session), "status": f"{name} {'shown' if shown else 'hidden'}"}
    if verb == "stroke":
        session.require_volume()
        points = []
        for pair in arg.split(";"):
            px, _, py = pair.partition(",")
            xy = display_to_slice(session, [float(px), float(py)])
            if xy is not None and (not points or points[-1] != xy):
                points.append(xy)
        if not points:
            return {"status": "brush strokes must start on the image"}
        message = session.stroke(points)  # first: the view must show the stroke
        return {**view(session), "status": message}
    raise ValueError(f"unknown command {verb!r}")


# --- clicks ------------------------------------------------------------------------------------------------------------
def display_to_slice(session: ViewerSession, index: Any) -> tuple[int, int] | None:
    """Slice pixel under a display pixel ``[X, Y]`` (a click's ``SelectData.index``)."""
    if not session.has_volume or index is None or len(index) != 2:
        return None
    return session.geometry().to_slice(float(index[0]), float(index[1]))


def _click(session: ViewerSession, index: Any) -> Updates:
    session.require_volume()
    xy = display_to_slice(session, index)
    if xy is None:
        return {"status": "click inside the image"}
    status = session.click(*xy)
    return {**view(session), "status": status}


@guarded
def on_select(session: ViewerSession, evt: Any) -> Updates:
    """A click on the image (``evt`` is a ``gr.SelectData``; ``evt.index == [X, Y]`` in display pixels)."""
    return _click(session, getattr(evt, "index", None))


@guarded
def on_click_xy(session: ViewerSession, px: float, py: float) -> Updates:
    """The same as a click, from display coordinates (the API endpoint and the benchmark use it)."""
    return _click(session, [px, py])


def on_hover(session: ViewerSession, text: str) -> Updates:
    """Value under the mouse: ``text`` is ``"X,Y"`` in display pixels (sent by the page's script)."""
    try:
        px, py = (float(t) for t in str(text).split(","))
        xy = display_to_slice(session, [px, py])
        if xy is not None:
            session.inspect(*xy)
    except (ValueError, RuntimeError, IndexError):
        pass
    return {"cursor": session.cursor}


# --- editing and model actions ---------------------------------------------------------------------------------------
@guarded
def on_undo(session: ViewerSession) -> Updates:
    """Undo the last action, then draw the state it left (the view may move to the slice that changed back)."""
    message = session.undo()  # first: the view below must show the undone state
    return full_view(session, message)


@guarded
def on_clear(session: ViewerSession) -> Updates:
    msg = session.clear_slice()
    return {**view(session), "status": msg}


@guarded
def on_auto_slice(session: ViewerSession) -> Updates:
    msg = actions.auto_slice(session)
    return {**view(session), "status": msg}


@guarded
def on_auto_volume(session: ViewerSession, progress: Progress) -> Updates:
    msg = actions.auto_volume(session, progress)
    return {**view(session), "status": msg}


@guarded
def on_propagate(session: ViewerSession, progress: Progress) -> Updates:
    msg = actions.propagate(session, progress)
    return {**view(session), "status": msg}


@guarded
def on_export(session: ViewerSession, choice: str | None = "NIfTI") -> Updates:
    """Export as the page's choice (:data:`actions.EXPORT_FORMATS`: NIfTI, DICOM-SEG or RTSTRUCT)."""
    fmt = actions.EXPORT_FORMATS.get(str(choice or "NIfTI"))
    if fmt is None:
        raise ValueError(f"unknown export format {choice!r}; choose one of {list(actions.EXPORT_FORMATS)}")
    files = actions.export(session, fmt=fmt)
    where = "source geometry" if fmt == "nifti" else "of the open DICOM series"
    return {
        "download": [str(f) for f in files],
        "status": f"exported {files[0].name} ({where}) and {files[1].name}",
    }


@guarded
def on_save_prompts(session: ViewerSession) -> Updates:
    path = actions.save_prompts(session)
    return {"download": [str(path)], "status": f"saved {len(session.prompts)} prompt(s) to {path.name}"}


@guarded
def on_load_prompts(session: ViewerSession, file: str | None, policy: UploadPolicy) -> Updates:
    if not file:
        return {"status": ""}
    return _read_upload(session, file, policy, lambda p: actions.load_prompts(session, p))


@guarded
def on_load_labels(session: ViewerSession, files: list[str] | str | None, policy: UploadPolicy) -> Updates:
    """A label map, optionally with its JSON sidecar (names and colours), as :func:`on_export` writes them."""
    if not files:
        return {"status": ""}
    paths = [Path(f) for f in ([files] if isinstance(files, str) else list(files)) if f]
    try:
        for path in paths:
            check_uploaded([path], policy)
        sidecars = [p for p in paths if p.name.lower().endswith(".json")]
        maps = [p for p in paths if p not in sidecars]
        if len(maps) != 1 or len(sidecars) > 1:
            raise ValueError(
                f"load one label map, optionally with its JSON sidecar; got {len(maps)} label map(s) and "
                f"{len(sidecars)} JSON file(s)"
            )
        session.upload_name = maps[0].name
        msg = actions.load_label_map(session, maps[0], sidecars[0] if sidecars else None)
    finally:
        for path in paths:
            discard_upload(path, policy)
    return {**full_view(session, msg), "load_labels": None}


def _uploaded_file(file: str, policy: UploadPolicy) -> Path:
    path = Path(file)
    check_uploaded([path], policy)
    return path


def _read_upload(
    session: ViewerSession, file: str, policy: UploadPolicy, read: Callable[[Path], str]
) -> Updates:
    """Check an uploaded file, read it with ``read`` and delete it from Gradio's upload folder (read or not)."""
    session.upload_name = Path(file).name
    path = _uploaded_file(file, policy)
    try:
        msg = read(path)
    finally:
        discard_upload(path, policy)
    return full_view(session, msg)
