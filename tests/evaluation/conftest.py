"""Small NIfTI label maps written into tmp_path."""

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
