"""``data prepare`` into a read-only folder or onto a full disk (issue 14): one line naming the folder asked for,
exit 2, nothing left behind."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest

from salt_seg.cli import main


def test_read_only_parent_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def refuse(prefix=None, dir=None, **_):  # noqa: A002, ANN001, ANN202 - tempfile.mkdtemp's signature
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / f"{prefix}abc123"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "ro" / "ds"
    (tmp_path / "ro").mkdir()
    rc = main(["data", "prepare", "synthetic-shapes", "--out", str(out)])
    assert rc == 2
    assert capsys.readouterr().err.splitlines() == [f"salt-seg data: error: {out}: read-only file system"]
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == []


def test_full_disk_mid_build_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import nibabel as nib

    def full(img, filename):  # noqa: ANN001, ANN202 - nibabel.save's signature
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr(nib, "save", full)
    out = tmp_path / "new" / "ds"
    rc = main(["data", "prepare", "synthetic-shapes", "--out", str(out)])
    assert rc == 2
    assert capsys.readouterr().err.splitlines() == [
        f"salt-seg data: error: {out}: no space left on device (disk full)"
    ]
    assert list(tmp_path.iterdir()) == []  # not even the parent it created
