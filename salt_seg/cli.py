"""The ``salt-seg`` command line.

Each subcommand lives in ``salt_seg/commands/<name>.py`` and exposes ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Command modules import nothing heavy at module level, so ``salt-seg --help`` and
``--version`` are instant; torch & co. are imported inside ``run``.

User mistakes (``ValueError``, ``FileNotFoundError``, ...) and a run directory that cannot be written
(``RunDirWriteError``, which says how to resume) become one ``salt-seg: error: ...`` line and exit status 2; so do
the file system's other refusals (read-only, disk full, no permission, quota: :func:`storage_error`), as
``salt-seg CMD: error: PATH: cause``. A traceback is shown only for genuine bugs, or for everything with
``SALT_SEG_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from salt_seg import __version__
from salt_seg.data.errors import storage_error

#: subcommand name -> module. A command is listed here only once it works.
COMMANDS: dict[str, str] = {
    "inspect": "salt_seg.commands.inspect",
    "evaluate": "salt_seg.commands.evaluate",
    "data": "salt_seg.commands.data",
    "train": "salt_seg.commands.train",
    "pretrain": "salt_seg.commands.pretrain",
    "predict": "salt_seg.commands.predict",
    "export-onnx": "salt_seg.commands.export_onnx",
    "params": "salt_seg.commands.params",
    "library": "salt_seg.commands.library",
    "app": "salt_seg.commands.app",
}

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salt-seg",
        description=(
            "Adapt Segment Anything to medical images with SALT and its SVD-family peers: train few-shot, "
            "evaluate honestly, segment volumes, export NIfTI. Research use only, not a medical device."
        ),
        epilog="Run 'salt-seg COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"salt-seg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from salt_seg.runs import RunDirWriteError  # light: a full disk or read-only run directory

    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("salt-seg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SALT_SEG_DEBUG"):
            raise
        storage = None if isinstance(exc, RunDirWriteError) else storage_error(exc)
        if storage is not None:
            print(f"salt-seg {args.command}: error: {storage}", file=sys.stderr)
            return 2
        if not isinstance(exc, (RunDirWriteError, *USER_ERRORS)):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in msg:
            msg = f"{exc.filename}: {msg}"
        print(f"salt-seg {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
