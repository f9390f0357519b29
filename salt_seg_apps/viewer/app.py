"""The Gradio page of the viewer: layout, wiring, sessions and safe launch defaults.

Safety defaults (see the README's Viewer section):

* binds ``127.0.0.1`` unless told otherwise; no authentication, so exposing it is the operator's decision;
* uploads are capped (``max_file_size`` for Gradio, and again in :mod:`salt_seg_apps.viewer.uploads` for the total of
  several files and for what a zip expands to); only files Gradio received are read, plus the one path given on
  the command line -- the page cannot name a server path, and no ``allowed_paths`` are granted;
* each browser tab gets its own :class:`~salt_seg_apps.viewer.session.ViewerSession`, with its own folder, keyed by a
  server-issued secret (an ``HttpOnly`` cookie) together with the tab's session hash, and each session hash is bound
  to the secret that first used it (:mod:`salt_seg_apps.viewer.guard`): a client that sends another tab's hash gets nothing;
* a session is freed when the tab closes (``unload``), after ``idle_timeout_s`` without events, or, least recently
  used first, when the sessions together hold more than ``memory_budget_mb`` (:mod:`salt_seg_apps.viewer.registry`); its
  tab's next event says so;
* uploads are moved out of Gradio's upload folder into the session's folder before they are read (a label map or
  prompt file is deleted once read), and files that came through the upload route are never served back;
* messages name the user's files, never a server path;
* the app's temporary folder is removed on ``close``, at interpreter exit and on SIGTERM;
* a bad upload or any failing action shows one readable line in the page and the app keeps working.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from salt_seg_apps.viewer import handlers as h
from salt_seg_apps.viewer.actions import EXPORT_FORMATS
from salt_seg_apps.viewer.engine import (
    BUILTIN_MODEL,
    ModelRegistry,
    library_loaders,
    load_builtin,
    load_exported,
    load_trained,
)
from salt_seg_apps.viewer.guard import SECRET_HEADER, GuardMiddleware, SessionGuard, upload_checker
from salt_seg_apps.viewer.page import CSS, HOVER_SCRIPT, PAGE_SCRIPT
from salt_seg_apps.viewer.registry import SessionRegistry, freed_message
from salt_seg_apps.viewer.session import PRESETS, TOOLS, ViewerSession
from salt_seg_apps.viewer.uploads import Staged, UploadPolicy, load_staged, stage_upload

log = logging.getLogger(__name__)


@dataclass
class ViewerConfig:
    """How the viewer runs.

    Attributes:
        path: a volume to open in every new tab (file, DICOM folder or zip), or ``None``.
        model: a trained run directory or adapter file offered next to the built-in base, or ``None``.
        host: interface to bind (``127.0.0.1``: this machine only).
        port: TCP port (``None``: the first free one from 7860).
        max_upload_mb: largest upload in MB.
        device: torch device for the models.
        display_size: longest side of the drawn slice in pixels.
        cache_size: slice embeddings kept per session.
        radius: neighbouring slices embedded in the background on each side.
        idle_timeout_s: a session without events for this long is freed.
        memory_budget_mb: what all sessions together may hold (volumes, label maps, undo, embeddings); beyond it
            the least recently used sessions are freed.
        max_sessions: sessions kept at once (a guard against floods of empty sessions; empty ones are freed first).
        builtin: offer the built-in base.
        library: an adapter library folder (:mod:`salt_seg.library`) whose entries are offered as
            ``library: NAME``; they share one base read from disk once.
        precision: ``fp32``, ``bf16`` or ``fp16`` inference of the PyTorch models (:mod:`salt_seg.model.precision`).
        backend: ``torch``, or ``onnx``: ``model`` is a folder ``salt-seg export-onnx`` wrote, run on ONNX Runtime
            (:func:`salt_seg.inference.onnx_model.load_onnx_model`); the built-in base stays on PyTorch.
        threads: intra-op threads of the ONNX Runtime sessions (default: torch's thread count).
        mirror: test-time mirroring of slices and prompts (:class:`~salt_seg.model.predictor.Predictor`).
    """

    path: str | None = None
    model: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    max_upload_mb: int = 1024
    device: str = "cpu"
    display_size: int = 512
    cache_size: int = 48
    radius: int = 3
    idle_timeout_s: float = 4 * 3600.0
    memory_budget_mb: int = 8192
    max_sessions: int = 256
    builtin: bool = True
    library: str | None = None
    precision: str = "fp32"
    backend: str = "torch"
    threads: int | None = None
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.max_upload_mb < 1:
            raise ValueError(f"max_upload_mb must be >= 1, got {self.max_upload_mb}")
        if self.port is not None and not 1 <= int(self.port) <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.memory_budget_mb < 1:
            raise ValueError(f"memory_budget_mb must be >= 1, got {self.memory_budget_mb}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")
        if not self.builtin and self.model is None and self.library is None:
            raise ValueError("no model to offer: keep the built-in base or give a trained model or a library")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be torch or onnx, got {self.backend!r}")
        if self.backend == "onnx" and self.model is None:
            raise ValueError("--backend onnx needs --model: a folder written by `salt-seg export-onnx`")


def default_registry(config: ViewerConfig) -> ModelRegistry:
    """The built-in base and, when given, the trained model (named by its folder or file) and the entries of an
    adapter library (``library: NAME``)."""
    loaders: dict[str, Callable[[], Any]] = {}
    if config.model is not None:
        path = str(config.model)
        if config.backend == "onnx":
            loaders[f"onnx: {Path(path).name}"] = lambda: load_exported(path, config.threads)
        else:
            loaders[f"trained: {Path(path).name}"] = lambda: load_trained(path, config.device)
    if config.library is not None:
        loaders.update(library_loaders(config.library, config.device))
    if config.builtin:
        loaders[BUILTIN_MODEL] = lambda: load_builtin(config.device)
    return ModelRegistry(loaders)


class ViewerApp:
    """The viewer: a Gradio ``Blocks`` page plus its sessions.

    Args:
        config: run settings.
        registry: the models (default: :func:`default_registry`); tests inject small ones.
    """

    def __init__(self, config: ViewerConfig, registry: ModelRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or default_registry(config)
        self.root = Path(tempfile.mkdtemp(prefix="salt-seg-viewer-"))
        atexit.register(self._remove_folder)
        self._previous_sigterm: Any = None
        self._stop_sweeping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.policy = UploadPolicy(max_bytes=config.max_upload_mb * 1024**2, roots=_upload_roots())
        self.guard = SessionGuard(owner_ttl_s=max(config.idle_timeout_s, 24 * 3600.0))
        self.sessions = SessionRegistry(
            self._new_session,
            self.root / "sessions",
            idle_timeout_s=config.idle_timeout_s,
            memory_budget_bytes=config.memory_budget_mb * 1024**2,
            max_sessions=config.max_sessions,
        )
        self._initial: Staged | None = None
        self._initial_volume: Any = None
        self._initial_lock = threading.Lock()
        if config.path is not None:
            self._initial = self._stage_path(Path(config.path))
        self.demo = self._build()

    def _new_session(self, workdir: Path) -> ViewerSession:
        return ViewerSession(
            self.registry,
            workdir,
            display_size=self.config.display_size,
            cache_size=self.config.cache_size,
            radius=self.config.radius,
            precision=self.config.precision,
            mirror=self.config.mirror,
        )

    def _stage_path(self, path: Path) -> Staged:
        """The command-line path, read once (a zip is extracted into the app's folder)."""
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            from salt_seg.data.dicom import list_dicom_series

            return Staged(path, list_dicom_series(path), name=path.name)
        local = UploadPolicy(max_bytes=1 << 62, max_voxels=self.policy.max_voxels)
        return stage_upload([path], self.root / "cli", local)

    def _open_initial(self, session: ViewerSession) -> h.Updates:
        staged = self._initial
        if staged is None or session.has_volume:
            return h.full_view(session, "")
        if staged.needs_choice:
            return h.on_open_path(session, staged, self.policy)
        with self._initial_lock:  # one copy of the command-line volume, shared read-only by the tabs
            if self._initial_volume is None:
                self._initial_volume = load_staged(staged, max_voxels=self.policy.max_voxels)
        session.open(self._initial_volume, staged.source_path, shared=True, dicom_source=staged.path)
        return h.full_view(session, h.opened_message(session))

    # --- sessions ---------------------------------------------------------------------------------------------------
    def session_key(self, request: gr.Request) -> str:
        """The key of the request's session: its server-issued secret (checked) and its tab's session hash.

        Raises:
            PermissionError: no valid secret (the request did not pass through :class:`GuardMiddleware`).
        """
        secret = dict(getattr(request, "headers", {}) or {}).get(SECRET_HEADER, "")
        return self.guard.session_key(secret, str(request.session_hash or ""))

    def run_event(
        self,
        request: gr.Request,
        handler: Callable[[ViewerSession], h.Updates],
        *,
        note: bool = True,
        lock: bool = True,
    ) -> h.Updates:
        """Run ``handler`` on the request's session, under the session's lock unless ``lock=False`` (the hover
        readout, which only reads and must not queue up behind a long propagation).

        The first event after the registry freed the tab's session gets a fresh session and, unless the event
        opened a volume, the reason as its status (``note=False``: leave the reason for a later event, for events
        whose output has no status line).
        """
        try:
            key = self.session_key(request)
        except PermissionError as exc:
            return {"status": f"⚠️ {exc}"}
        with self.sessions.use(key, take_note=note) as (session, freed):
            if lock:
                with session.lock:
                    out = handler(session)
            else:
                out = handler(session)
            if freed is not None and not session.has_volume:
                out = {**out, "status": freed_message(freed)}
        return out

    # --- page -------------------------------------------------------------------------------------------------------
    def _build(self) -> gr.Blocks:
        """The page: the controls on the left, the slice on the right, and the events wired to the handlers."""
        ui = SimpleNamespace()  # the page's components by name, filled by the panel builders
        with gr.Blocks(title="salt-seg viewer", analytics_enabled=False) as demo:  # no calls home
            gr.Markdown(
                "### salt-seg viewer · SAM with SALT adapters on NIfTI / DICOM · research use only, not a "
                "medical device",
                elem_id="viewer-title",
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=330, elem_id="viewer-controls"):
                    self._volume_panel(ui)
                    self._tool_panel(ui)
                    self._label_panel(ui)
                    self._window_panel(ui)
                    self._files_panel(ui)
                with gr.Column(scale=2, elem_id="viewer-main"):
                    self._action_bar(ui)
                    self._image_panel(ui)
                    _script_bridge(ui)
            self._wire_events(demo, ui, _Events(self, ui))
        demo.queue(default_concurrency_limit=8)
        return demo

    def _volume_panel(self, ui: SimpleNamespace) -> None:
        """Open a volume (upload, or the choice of a DICOM series) and choose the model."""
        names = self.registry.names
        ui.upload = gr.File(
            label="Open a volume: NIfTI, DICOM zip, or several DICOM files (replaces the open one)",
            file_count="multiple",  # no file_types: DICOM files often have no extension
            elem_id="viewer-upload",
            height=110,
        )
        ui.series = gr.Dropdown(label="DICOM series", choices=[], visible=False, elem_id="viewer-series")
        ui.open_series = gr.Button("Open series", visible=False, elem_id="viewer-open-series")
        ui.model = gr.Dropdown(label="Model", choices=names, value=names[0], elem_id="viewer-model")
        ui.model_note = gr.Markdown(elem_id="viewer-model-note")

    @staticmethod
    def _tool_panel(ui: SimpleNamespace) -> None:
        """The view (axial, coronal, sagittal) and the click tool with its brush radius."""
        with gr.Row():
            ui.view_axis = gr.Radio(
                list(h.VIEW_NAMES), value="Axial", label="View", elem_id="viewer-view", scale=3
            )
        ui.tool = gr.Radio(
            list(TOOLS),
            value=TOOLS[0],
            label="Click tool (keys P N B R E I)",
            elem_id="viewer-tool",
        )
        ui.brush = gr.Slider(0, 30, value=3, step=1, label="Brush / eraser radius (voxels)")

    @staticmethod
    def _label_panel(ui: SimpleNamespace) -> None:
        """The active label, the labels' volumes, adding, renaming and deleting labels, and the overlay opacity."""
        with gr.Group(elem_id="viewer-label-box"):
            ui.label = gr.Dropdown(
                label="Active label", choices=[("1: label 1", 1)], value=1, elem_id="viewer-label"
            )
            ui.volumes = gr.HTML(elem_id="viewer-volumes")
            ui.new_label = gr.Textbox(
                label="Label name",
                placeholder="e.g. liver",
                elem_id="viewer-new-label",
            )
            with gr.Row():
                ui.add_label = gr.Button("Add", size="sm", elem_id="viewer-add-label")
                ui.rename_label = gr.Button("Rename active", size="sm", elem_id="viewer-rename-label")
                ui.delete_label = gr.Button("Delete active", size="sm", elem_id="viewer-delete-label")
        ui.opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="viewer-opacity")

    @staticmethod
    def _window_panel(ui: SimpleNamespace) -> None:
        """Window / level: a preset or the two sliders."""
        with gr.Accordion("Window / level", open=False):
            ui.preset = gr.Dropdown([(h.PRESET_NAMES[p], p) for p in PRESETS], value="auto", label="Preset")
            ui.level = gr.Slider(-1024, 3071, value=40, label="Level", elem_id="viewer-level")
            ui.width = gr.Slider(1, 4000, value=400, label="Width", elem_id="viewer-width")

    @staticmethod
    def _files_panel(ui: SimpleNamespace) -> None:
        """Label maps and prompts in and out, and the export format."""
        with gr.Accordion("Files: label maps and prompts", open=False):
            ui.load_labels = gr.File(
                label="Load a label map: NIfTI (with its .json sidecar for names and colours), or a "
                "DICOM-SEG / RTSTRUCT of the open series",
                file_count="multiple",
                file_types=[".nii", ".gz", ".nrrd", ".mha", ".json", ".dcm"],
                elem_id="viewer-load-labels",
                height=110,
            )
            ui.load_prompts = gr.File(
                label="Load prompts (JSON)",
                file_types=[".json"],
                elem_id="viewer-load-prompts",
                height=110,
            )
            ui.save_prompts = gr.Button("Save prompts", elem_id="viewer-save-prompts")
            ui.export_format = gr.Radio(
                list(EXPORT_FORMATS),
                value="NIfTI",
                label="Export as (DICOM-SEG and RTSTRUCT: volumes opened from a DICOM series)",
                elem_id="viewer-export-format",
            )

    @staticmethod
    def _action_bar(ui: SimpleNamespace) -> None:
        """Undo, clear, automatic segmentation, propagation and export; the status line; the confirmation asked
        before an open volume with labels is replaced."""
        with gr.Row(elem_id="viewer-actions"):
            ui.undo = gr.Button("↶ Undo (Ctrl+Z)", size="sm", elem_id="viewer-undo")
            ui.clear = gr.Button("Clear slice", size="sm", elem_id="viewer-clear")
            ui.auto_slice = gr.Button("Auto: slice", size="sm", elem_id="viewer-auto-slice")
            ui.auto_volume = gr.Button("Auto: volume", size="sm", elem_id="viewer-auto-volume")
            ui.propagate = gr.Button("Propagate", size="sm", elem_id="viewer-propagate")
            ui.export = gr.Button("Export", size="sm", variant="primary", elem_id="viewer-export")
        ui.status = gr.Markdown(elem_id="viewer-status")
        with gr.Row(visible=False, elem_id="viewer-confirm") as ui.confirm:
            ui.confirm_open = gr.Button(
                "Discard labels and open the new volume",
                variant="stop",
                size="sm",
                elem_id="viewer-confirm-open",
            )
            ui.cancel_open = gr.Button("Keep working on this one", size="sm", elem_id="viewer-cancel-open")

    @staticmethod
    def _image_panel(ui: SimpleNamespace) -> None:
        """The slice with its overlay, slice navigation, the cursor readout, the volume's info and the downloads."""
        ui.image = gr.Image(
            format="png",
            type="numpy",
            interactive=False,
            show_label=False,
            elem_id="viewer-image",
            buttons=["fullscreen"],
        )
        with gr.Row(equal_height=True):
            ui.prev = gr.Button("◀ Prev", scale=0, min_width=80, size="sm", elem_id="viewer-prev")
            ui.slider = gr.Slider(
                0, 1, value=0, step=1, label="Slice (wheel, ↑ ↓)", elem_id="viewer-slice", scale=4
            )
            ui.nxt = gr.Button("Next ▶", scale=0, min_width=80, size="sm", elem_id="viewer-next")
        ui.cursor = gr.Markdown(elem_id="viewer-cursor")
        ui.info = gr.Markdown(elem_id="viewer-info")
        ui.download = gr.File(
            label="Download",
            file_count="multiple",
            interactive=False,
            elem_id="viewer-download",  # hidden by the CSS until there is something to download
        )

    def _wire_events(self, demo: gr.Blocks, ui: SimpleNamespace, ev: _Events) -> None:
        """Each control's event to its handler (:mod:`salt_seg_apps.viewer.handlers`); every event updates
        :attr:`_Events.outputs`."""
        outputs, bind, bind_progress, policy = ev.outputs, ev.bind, ev.bind_progress, self.policy
        quiet = {"show_progress": "hidden"}
        busy = {"show_progress_on": [ui.image]}  # progress on the picture, not on every output
        demo.load(ev.on_load, None, outputs, api_name="load")
        demo.unload(ev.on_unload)
        ui.upload.upload(bind(h.on_upload, policy), ui.upload, outputs, api_name="upload", **busy)
        ui.open_series.click(
            bind(h.on_open_series, policy), ui.series, outputs, api_name="open_series", **busy
        )
        ui.model.input(bind(h.on_model), ui.model, outputs, api_name="model", **busy)
        ui.view_axis.input(bind(h.on_axis), ui.view_axis, outputs, api_name="view", **quiet)
        ui.preset.input(bind(h.on_preset), ui.preset, outputs, api_name="preset", **quiet)
        window = [ui.level, ui.width]
        ui.level.release(bind(h.on_window, n=2), window, outputs, api_name="window", **quiet)
        ui.width.release(bind(h.on_window, n=2), window, outputs, api_name=False, **quiet)
        ui.tool.input(bind(h.on_tool), ui.tool, outputs, api_name="tool", **quiet)
        ui.brush.release(bind(h.on_brush), ui.brush, outputs, api_name="brush", **quiet)
        ui.label.input(bind(h.on_label), ui.label, outputs, api_name="label", **quiet)
        ui.add_label.click(
            bind(h.on_add_label), ui.new_label, outputs, api_name="add_label", show_progress_on=[ui.status]
        )
        ui.opacity.release(bind(h.on_opacity), ui.opacity, outputs, api_name="opacity", **quiet)
        ui.slider.input(
            bind(h.on_slice), ui.slider, outputs, api_name="slice", trigger_mode="always_last", **quiet
        )
        ui.prev.click(bind(h.on_step, -1, n=0), None, outputs, api_name="prev", **quiet)
        ui.nxt.click(bind(h.on_step, 1, n=0), None, outputs, api_name="next", **quiet)
        ui.image.select(ev.on_select, None, outputs, api_name=False, **quiet)
        ui.click_btn.click(bind(h.on_click_xy, n=2), [ui.click_x, ui.click_y], outputs, api_name="click")
        ui.hover_btn.click(
            ev.on_hover,
            ui.hover,
            [ui.cursor],
            api_name=False,
            queue=False,
            trigger_mode="always_last",
            **quiet,
        )
        ui.undo.click(bind(h.on_undo, n=0), None, outputs, api_name="undo", **quiet)
        ui.confirm_open.click(
            bind(h.on_confirm_open, policy, n=0), None, outputs, api_name="confirm_open", **busy
        )
        ui.cancel_open.click(bind(h.on_cancel_open, n=0), None, outputs, api_name="cancel_open", **quiet)
        ui.rename_label.click(
            bind(h.on_rename_label), ui.new_label, outputs, api_name="rename_label", **quiet
        )
        ui.delete_label.click(bind(h.on_delete_label, n=0), None, outputs, api_name="delete_label", **quiet)
        ui.command_btn.click(
            bind(h.on_command), ui.command, outputs, api_name="command", trigger_mode="multiple", **quiet
        )
        ui.clear.click(bind(h.on_clear, n=0), None, outputs, api_name="clear", **quiet)
        ui.auto_slice.click(bind(h.on_auto_slice, n=0), None, outputs, api_name="auto_slice", **busy)
        ui.auto_volume.click(bind_progress(h.on_auto_volume), None, outputs, api_name="auto_volume", **busy)
        ui.propagate.click(bind_progress(h.on_propagate), None, outputs, api_name="propagate", **busy)
        ui.export.click(
            bind(h.on_export), ui.export_format, outputs, api_name="export", show_progress_on=[ui.status]
        )
        ui.save_prompts.click(
            bind(h.on_save_prompts, n=0),
            None,
            outputs,
            api_name="save_prompts",
            show_progress_on=[ui.status],
        )
        ui.load_prompts.upload(
            bind(h.on_load_prompts, policy), ui.load_prompts, outputs, api_name="load_prompts", **busy
        )
        ui.load_labels.upload(
            bind(h.on_load_labels, policy), ui.load_labels, outputs, api_name="load_labels", **busy
        )

    # --- running ------------------------------------------------------------------------------------------------------
    def launch_kwargs(self) -> dict[str, Any]:
        """What :meth:`launch` passes to ``Blocks.launch`` (tests reuse it with ``prevent_thread_lock``)."""
        # Gradio's own record of what came through its upload route
        guard = Middleware(
            GuardMiddleware, guard=self.guard, is_upload=upload_checker(self.demo.upload_file_set)
        )
        return {
            "app_kwargs": {"middleware": [guard]},
            "server_name": self.config.host,
            "server_port": self.config.port,
            "max_file_size": f"{self.config.max_upload_mb}mb",
            "head": HOVER_SCRIPT + PAGE_SCRIPT,
            "css": CSS,
            "footer_links": [],
            "quiet": True,
            "share": False,
        }

    def launch(self, *, prevent_thread_lock: bool = False, **overrides: Any) -> str:
        """Start the server; returns its local URL (blocks unless ``prevent_thread_lock``)."""
        kwargs = {**self.launch_kwargs(), **overrides}
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, name="viewer-session-sweeper", daemon=True)
            self._sweeper.start()
        _, url, _ = self.demo.launch(prevent_thread_lock=prevent_thread_lock, **kwargs)
        return url

    def _sweep(self) -> None:
        """Free idle sessions even when no tab sends events (at most a minute, or a quarter timeout, late)."""
        interval = min(60.0, max(0.1, self.config.idle_timeout_s / 4))
        while not self._stop_sweeping.wait(interval):
            self.sessions.sweep()

    def _on_sigterm(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - the signal handler signature
        """Remove the folder at once, then exit like Ctrl+C does (``close`` still runs in ``finally`` blocks)."""
        log.info("SIGTERM: removing %s and stopping", self.root)
        self._remove_folder()
        raise SystemExit(128 + signum)

    def _remove_folder(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        """Stop the server and free every session and the app's folder."""
        self._stop_sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        try:
            self.demo.close()
        finally:
            self.sessions.close_all()
            self._remove_folder()
            atexit.unregister(self._remove_folder)
            if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None


def _script_bridge(ui: SimpleNamespace) -> None:
    """Hidden inputs through which the page's script (:mod:`salt_seg_apps.viewer.page`) sends the hovered voxel,
    keyboard commands and clicks in image coordinates."""
    ui.hover = gr.Textbox(visible="hidden", elem_id="viewer-hover")
    ui.hover_btn = gr.Button("hover", visible="hidden", elem_id="viewer-hover-btn")
    ui.command = gr.Textbox(visible="hidden", elem_id="viewer-cmd")
    ui.command_btn = gr.Button("command", visible="hidden", elem_id="viewer-cmd-btn")
    ui.click_x = gr.Number(visible=False)
    ui.click_y = gr.Number(visible=False)
    ui.click_btn = gr.Button("click", visible=False)


class _Events:
    """The event functions of one page: each runs a handler on the tab's session
    (:meth:`ViewerApp.run_event`) and turns the handler's updates, keyed by name, into Gradio's.

    :attr:`outputs` is what every event updates, in this order (tests read the positions): the components of
    :attr:`comps`, then the "Open series" button (shown with the series choice).
    """

    def __init__(self, app: ViewerApp, ui: SimpleNamespace) -> None:
        self.app = app
        self.comps: dict[str, Any] = {
            "image": ui.image,
            "slice": ui.slider,
            "info": ui.info,
            "cursor": ui.cursor,
            "volumes": ui.volumes,
            "status": ui.status,
            "series": ui.series,
            "labels": ui.label,
            "view_axis": ui.view_axis,
            "level": ui.level,
            "width": ui.width,
            "preset": ui.preset,
            "download": ui.download,
            "model_note": ui.model_note,
            "confirm": ui.confirm,
            "upload": ui.upload,
            "load_labels": ui.load_labels,
            "new_label": ui.new_label,
        }
        self.open_series = ui.open_series
        self.outputs = [*self.comps.values(), ui.open_series]

    def to_gradio(self, updates: h.Updates) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in updates.items():
            comp = self.comps[key]
            out[comp] = gr.update(**value) if isinstance(value, dict) else value
            if key == "series" and isinstance(value, dict) and "visible" in value:
                out[self.open_series] = gr.update(visible=value["visible"])
        return out

    def bind(
        self, handler: Callable[..., h.Updates], *extra: Any, n: int = 1
    ) -> Callable[..., dict[Any, Any]]:
        """An event function with ``n`` component inputs (Gradio needs fixed signatures to inject the request),
        running ``handler(session, *inputs, *extra)`` under the tab's lock."""

        def call(request: gr.Request, args: tuple[Any, ...]) -> dict[Any, Any]:
            return self.to_gradio(self.app.run_event(request, lambda s: handler(s, *args, *extra)))

        if n == 0:

            def fn0(request: gr.Request) -> dict[Any, Any]:
                return call(request, ())

            return fn0
        if n == 1:

            def fn1(a: Any, request: gr.Request) -> dict[Any, Any]:
                return call(request, (a,))

            return fn1

        def fn2(a: Any, b: Any, request: gr.Request) -> dict[Any, Any]:
            return call(request, (a, b))

        return fn2

    def bind_progress(self, handler: Callable[..., h.Updates]) -> Callable[..., dict[Any, Any]]:
        """An event function without inputs whose handler reports progress (shown on the image)."""

        def fn(request: gr.Request, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[Any, Any]:  # noqa: B008
            return self.to_gradio(
                self.app.run_event(request, lambda s: handler(s, lambda f, d: progress(f, desc=d)))
            )

        return fn

    def on_select(self, request: gr.Request, evt: gr.SelectData) -> dict[Any, Any]:
        return self.to_gradio(self.app.run_event(request, lambda s: h.on_select(s, evt)))

    def on_hover(self, text: str, request: gr.Request) -> dict[Any, Any]:
        out = self.app.run_event(request, lambda s: h.on_hover(s, text), note=False, lock=False)
        return self.to_gradio({"cursor": out.get("cursor", "")})

    def on_load(self, request: gr.Request) -> dict[Any, Any]:
        return self.to_gradio(self.app.run_event(request, self.app._open_initial))

    def on_unload(self, request: gr.Request) -> None:
        try:
            self.app.sessions.close(self.app.session_key(request))
        except PermissionError:
            pass


def _upload_roots() -> list[Path]:
    """Where Gradio keeps uploads (the only folders handlers read files from)."""
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder())]
