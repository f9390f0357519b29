"""The CLI's one-line errors (issue 14): the file system's refusals name the path and the cause."""

from __future__ import annotations

import argparse
import errno

import pytest

from salt_seg import cli
from salt_seg.data.errors import storage_error


class SafetensorError(Exception):
    """Stands in for ``safetensors.SafetensorError`` (matched by name: the class lives in a Rust extension)."""


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/ro/run"), "/ro/run: read-only file system"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/d/x.nii.gz"),
            "/d/x.nii.gz: no space left on device (disk full)",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device (disk full)"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x: permission denied"),
        (
            SafetensorError(
                'Error while serializing: I/O error: No space left on device (os error 28) at path "/r/.tmpA"'
            ),
            "/r/.tmpA: no space left on device (disk full)",
        ),
        (OSError(errno.ENOENT, "No such file", "/x"), None),
        (ValueError("bad"), None),
    ],
)
def test_storage_error_words(exc: BaseException, line: str | None) -> None:
    assert storage_error(exc) == line


def test_a_wrapped_refusal_is_found_through_its_cause() -> None:
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/ro/a")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert storage_error(outer) == "/ro/a: read-only file system"


@pytest.mark.parametrize("command", ["train", "evaluate", "data", "predict"])
def test_every_command_turns_a_full_disk_into_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys, command: str
) -> None:
    def run(args: argparse.Namespace) -> int:
        raise SafetensorError(
            'Error while serializing: I/O error: Read-only file system (os error 30) at path "/o/a"'
        )

    parser = cli.build_parser()
    real = parser.parse_args

    def parse(argv=None):  # noqa: ANN001, ANN202
        ns = argparse.Namespace(command=command, verbose=False, _run=run)
        return ns

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.delenv("SALT_SEG_DEBUG", raising=False)
    assert real is not None
    assert cli.main([command]) == 2
    assert capsys.readouterr().err.splitlines() == [f"salt-seg {command}: error: /o/a: read-only file system"]


def test_the_real_safetensors_error_is_recognised() -> None:
    """Matched by class name: the class lives in safetensors' Rust extension, which cli.py must not import."""
    import errno as _errno

    from safetensors import SafetensorError as Real

    exc = Real(
        f'Error while serializing: I/O error: Disk quota exceeded (os error {_errno.EDQUOT}) at path "/q/x"'
    )
    assert storage_error(exc) == "/q/x: disk quota exceeded"
