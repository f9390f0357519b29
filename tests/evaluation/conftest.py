"""Small NIfTI label maps and split files written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_label_map(
    path: Path, array: np.ndarray, spacing=(0.5, 2.0, 3.0), affine: np.ndarray | None = None
) -> Path:
    import nibabel as nib

    if affine is None:
        affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


@pytest.fixture
def nifti():
    return write_label_map


def write_split(path: Path, test: list, level: str = "volume", axis: int = 2) -> Path:
    """A salt_seg split file whose test part is ``[(case, slices or None), ...]``."""
    from salt_seg.data.split import Split, SplitEntry, save_split

    entries = [SplitEntry(c, s) for c, s in test]
    return save_split(Split(level, shots=1, seed=0, axis=axis, train=[SplitEntry("c0")], test=entries), path)


@pytest.fixture
def make_split():
    return write_split
