"""Fixtures for the viewer tests: generated volumes, the inference tests' oracle model, sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_seg.inference.loading import LoadedModel
from salt_seg_apps.viewer.engine import ModelRegistry
from salt_seg_apps.viewer.session import ViewerSession
from tests.data.conftest import write_dicom_series, write_nifti  # noqa: F401 - re-exported
from tests.inference.conftest import OracleModel, ellipsoid, las_affine, oracle_record, ras_affine  # noqa: F401

#: a CT-like volume: air -1000 HU around a 0 HU body holding a bright (300 HU) ellipsoid.
SHAPE = (64, 48, 20)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ct_volume(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Intensities in HU and the ellipsoid's mask."""
    arr = np.full(shape, -1000.0, dtype=np.float32)
    body = ellipsoid(shape, [s / 2 for s in shape], [s * 0.48 for s in shape])
    arr[body] = 0.0
    blob = ellipsoid(shape, (30, 22, 10), (9, 7, 6))
    arr[blob] = 300.0
    return arr, blob


def index_volume(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Each voxel holds its own index: ``i * 10000 + j * 100 + k`` (to check which voxel a click hits)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (i * 10000 + j * 100 + k).astype(np.float32)


def decode_index(value: float) -> tuple[int, int, int]:
    v = int(round(value))
    return v // 10000, (v // 100) % 100, v % 100


def oracle_loaded(classes: dict[int, str] | None = None) -> LoadedModel:
    """The oracle as a trained model whose record feeds it HU mapped by a CT window (bright = the blob)."""
    from dataclasses import replace

    classes = classes or {1: "blob"}
    record = replace(oracle_record(classes), intensity="ct", window_level=150.0, window_width=300.0)
    return LoadedModel(OracleModel(), record, dict(classes), {})  # type: ignore[arg-type]


def random_tiny_loaded() -> LoadedModel:
    """A randomly initialised `tiny` SAM at 128 px, used as a base model (record chosen by the viewer)."""
    from salt_seg.model.variants import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny", image_size=128).eval()
    return LoadedModel(model, None, {}, {})  # type: ignore[arg-type]


@pytest.fixture
def make_session(tmp_path: Path) -> Iterator[Callable[..., ViewerSession]]:
    """Sessions on the oracle (default) or another registry; closed at the end of the test."""
    made: list[ViewerSession] = []

    def make(registry: ModelRegistry | None = None, **kwargs) -> ViewerSession:
        reg = registry or ModelRegistry({"oracle": oracle_loaded})
        s = ViewerSession(reg, tmp_path / f"session{len(made)}", **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def ct_nifti(tmp_path: Path) -> Path:
    """The CT-like volume stored LAS with anisotropic voxels (0.9 x 1.1 x 2.0 mm)."""
    arr, _ = ct_volume()
    return write_nifti(tmp_path / "ct_las.nii.gz", arr, las_affine())
