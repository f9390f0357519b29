"""``salt-seg app``: the interactive viewer (Gradio) for NIfTI and DICOM volumes.

Thin on purpose: parse and validate, then start :class:`salt_seg_apps.viewer.app.ViewerApp`. Gradio and torch are imported
inside :func:`run` (the ``salt_seg_apps`` package is never imported by ``salt_seg`` at module level).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from salt_seg.commands.common import (
    add_backend_flag,
    add_precision_flag,
    add_runtime_flags,
    add_trained_model_flag,
    check_backend,
)

log = logging.getLogger(__name__)

HELP = "interactive viewer: open NIfTI/DICOM, segment with clicks, propagate, export NIfTI/DICOM-SEG/RTSTRUCT"
DESCRIPTION = (
    "Start the clinician-facing viewer in the browser: open a NIfTI file or a DICOM series (upload or PATH), view "
    "axial/coronal/sagittal slices in radiological convention with window/level presets, segment with positive/"
    "negative points, boxes or class tokens, correct with brush and eraser, propagate a slice's result through the "
    "volume, and export the label map as NIfTI in the source geometry (or, for a DICOM series, as DICOM-SEG or "
    "RTSTRUCT); load a NIfTI, DICOM-SEG or RTSTRUCT label map onto the open volume. --precision and --backend as "
    "for predict. Binds 127.0.0.1 by default; uploads are size-limited and the page cannot read server paths."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=None,
        metavar="PATH",
        help="a volume to open: NIfTI/NRRD/MHA file, DICOM folder or zip",
    )
    add_trained_model_flag(parser)
    parser.add_argument(
        "--port", type=int, default=None, help="TCP port (default: the first free one from 7860)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only; the viewer has no login)",
    )
    parser.add_argument(
        "--max-upload-mb", type=int, default=1024, metavar="N", help="largest upload in MB (default 1024)"
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=8192,
        metavar="N",
        help="memory all open sessions together may hold (volumes, label maps, undo, embeddings); beyond it the "
        "least recently used sessions are closed, and told so on their next action (default 8192)",
    )
    parser.add_argument(
        "--idle-minutes",
        type=float,
        default=240.0,
        metavar="M",
        help="close a session after M minutes without activity (default 240)",
    )
    parser.add_argument(
        "--library",
        default=None,
        metavar="DIR",
        help="also offer every adapter of this library (see salt-seg library); they share one base in memory",
    )
    parser.add_argument(
        "--no-builtin", action="store_true", help="offer only the --model/--library, not the built-in base"
    )
    add_backend_flag(parser)
    add_precision_flag(parser)
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="test-time mirroring: each slice is also encoded mirrored left-right and every click, box and "
        "propagation step is averaged over both views (predict --mirror's averaging; better single clicks on "
        "left-right symmetric anatomy, twice the encoding time per slice)",
    )
    add_runtime_flags(parser)


def validate(args: argparse.Namespace) -> None:
    """Check the arguments before anything heavy is imported.

    Raises:
        ValueError: a bad port, size or host, or ``--no-builtin`` without ``--model``.
        FileNotFoundError: ``PATH`` or ``--model`` does not exist.
    """
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb < 1:
        raise ValueError(f"--max-upload-mb must be >= 1, got {args.max_upload_mb}")
    if args.memory_budget_mb < 1:
        raise ValueError(f"--memory-budget-mb must be >= 1, got {args.memory_budget_mb}")
    if not args.idle_minutes > 0:
        raise ValueError(f"--idle-minutes must be > 0, got {args.idle_minutes}")
    if args.path is not None and not Path(args.path).exists():
        raise FileNotFoundError(f"{args.path}: no such file or folder")
    if args.model is not None and not Path(args.model).exists():
        raise FileNotFoundError(f"{args.model}: no such run directory or adapter file")
    if args.library is not None and not (Path(args.library) / "index.json").is_file():
        raise FileNotFoundError(
            f"{args.library}: not an adapter library (no index.json; see salt-seg library)"
        )
    if args.no_builtin and args.model is None and args.library is None:
        raise ValueError("--no-builtin needs --model RUN_OR_ADAPTER or --library DIR")
    if not args.host or any(c.isspace() for c in args.host):
        raise ValueError(f"--host: {args.host!r} is not a host name or address")
    check_backend(args)
    if args.backend == "onnx" and args.library is not None:
        raise ValueError("--backend onnx runs the one exported --model folder; drop --library")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    validate(args)
    from salt_seg.commands.common import resolve_backend_device
    from salt_seg.model.precision import check_precision
    from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig

    device = resolve_backend_device(args.backend, args.device, args.threads)
    check_precision(args.precision, device)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    if not is_loopback(args.host):
        log.warning(
            "binding %s: anyone who can reach this machine can use the viewer and read what is uploaded to it "
            "(there is no login)",
            args.host,
        )
    config = ViewerConfig(
        path=args.path,
        model=args.model,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        memory_budget_mb=args.memory_budget_mb,
        idle_timeout_s=args.idle_minutes * 60.0,
        device=str(device),
        builtin=not args.no_builtin,
        library=args.library,
        precision=args.precision,
        backend=args.backend,
        threads=args.threads,
        mirror=args.mirror,
    )
    app = ViewerApp(config)
    try:
        url = app.launch(prevent_thread_lock=True)
        print(f"salt-seg viewer on {url} (Ctrl+C to stop)")
        app.demo.block_thread()
    finally:
        app.close()
    return 0
