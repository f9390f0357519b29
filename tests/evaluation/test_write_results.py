"""``evaluate`` results are whole or absent (issue 14): a full disk half-way leaves the previous set (or nothing)
and prints one line naming the output folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from salt_seg.cli import main


def _cube() -> np.ndarray:
    m = np.zeros((10, 10, 4), np.uint8)
    m[2:6, 2:6, 1:3] = 1
    return m


def test_full_disk_leaves_the_previous_results(
    tmp_path: Path, nifti, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    nifti(tmp_path / "gt" / "c1.nii.gz", _cube())
    nifti(tmp_path / "pred" / "c1.nii.gz", _cube())
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(args) == 0
    out = tmp_path / "pred" / "evaluation"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    real_fdopen = os.fdopen
    calls = {"n": 0}

    class Full:
        def __init__(self, f):  # noqa: ANN001
            self.f = f

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            self.f.close()

        def write(self, text):  # noqa: ANN001, ANN202
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202 - the third file hits a full disk
        calls["n"] += 1
        f = real_fdopen(fd, *a, **k)
        return Full(f) if calls["n"] == 3 else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert main([*args, "--both-empty", "perfect"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"salt-seg evaluate: error: {out}: no space left on device (disk full)"
    ]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in (tmp_path / "pred").iterdir() if p.name.startswith(".")] == []
