"""Fixtures for the inference tests: an oracle model, generated volumes, a tiny trained-adapter run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from salt_seg.model.sam import InputPrompt
from salt_seg.preprocessing import Preprocessing
from tests.data.conftest import oblique_affine, write_dicom_series, write_nifti  # noqa: F401 - re-exported

#: the fake model's input size; slices whose longest side equals it map 1:1 onto the model input
S = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than with several on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _svd_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private SVD cache, never the user's."""
    monkeypatch.setenv("SALT_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "svd_cache"))


class OracleModel(nn.Module):
    """A stand-in for SamModel that segments bright objects exactly (to test geometry and logic, not learning).

    The "embedding" is the normalised image itself. A box prompt returns the pixels brighter than ``level``
    inside the box; a point prompt the bright connected component under the point; a class token (class 1) every
    bright pixel. Logits are +8/-8 at the input resolution ``S x S``; masks of fewer than ``small`` pixels get +0.5
    inside (stability score 0) and the predicted IoU ``low`` instead of ``high``.
    """

    def __init__(
        self,
        image_size: int = S,
        num_classes: int = 2,
        level: float = 0.5,
        small: int = 12,
        high: float = 0.95,
        low: float = 0.2,
    ) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self._size, self._classes = image_size, num_classes
        self.level, self.small, self.high, self.low = level, small, high, low
        self.variant = "oracle"

    @property
    def image_size(self) -> int:
        return self._size

    @property
    def num_classes(self) -> int:
        return self._classes

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1].clone()

    def decode_prompts(self, embeddings, prompts: list[InputPrompt], image_index, multimask_output=False):
        from scipy import ndimage

        logits, ious = [], []
        for p, i in zip(prompts, image_index, strict=True):
            img = embeddings[int(i), 0].numpy()
            bright = img > self.level
            mask = np.zeros_like(bright)
            if p.box is not None:
                x0, y0, x1, y1 = (float(v) for v in p.box)
                ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
                inside = (xs >= x0 - 1e-6) & (xs <= x1 + 1e-6) & (ys >= y0 - 1e-6) & (ys <= y1 + 1e-6)
                mask = bright & inside
            elif p.points is not None:
                lab, _ = ndimage.label(bright)
                for (x, y), lv in zip(p.points.tolist(), p.labels.tolist(), strict=True):
                    v = lab[int(round(y)), int(round(x))]
                    if lv == 1 and v:
                        mask |= lab == v
            elif p.class_id == 1:
                mask = bright
            sure = mask.sum() >= self.small
            inside = 8.0 if sure else 0.5  # unsure masks are soft: stability score 0
            logits.append(torch.from_numpy(np.where(mask, inside, -8.0).astype(np.float32))[None])
            ious.append(torch.tensor([self.high if sure else self.low]))
        return torch.stack(logits), torch.stack(ious)


@pytest.fixture
def oracle() -> OracleModel:
    return OracleModel()


def oracle_record(classes: dict[int, str] | None = None, axis: int = 2) -> Preprocessing:
    """[0, 1] intensities fed as is (medsam scaling, no mean/std), so the oracle sees the image."""
    return Preprocessing(
        intensity="none",
        input_scaling="medsam",
        image_size=S,
        axis=axis,
        classes=classes or {1: "bright"},
        prompt_mode="box",
    )


def ellipsoid(shape: tuple[int, int, int], centre, radii) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def las_affine(spacing=(0.9, 1.1, 2.0), origin=(30.0, -20.0, 5.0)) -> np.ndarray:
    a = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return a


def ras_affine(spacing=(0.9, 1.1, 2.0), origin=(-30.0, -20.0, 5.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def permuted_affine() -> np.ndarray:
    """Voxel axes stored as (S, R, A): source axis 0 is superior, 1 right, 2 anterior, with a flip."""
    a = np.zeros((4, 4))
    a[2, 0] = 2.0  # i -> +S
    a[0, 1] = -0.8  # j -> L
    a[1, 2] = 0.9  # k -> A
    a[:3, 3] = (10.0, -5.0, -40.0)
    a[3, 3] = 1.0
    return a


AFFINES = {
    "ras": ras_affine(),
    "las": las_affine(),
    "oblique": oblique_affine(),
    "permuted": permuted_affine(),
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a SALT adapter on a random `tiny` base (saved as base.safetensors), class tokens,
    64-px input and two named classes -- what training writes, without training."""
    import os

    from safetensors.torch import save_file

    from salt_seg.adapters import AdapterConfig, inject_adapters, save_adapter
    from salt_seg.model import build_model
    from salt_seg.model.checkpoint import state_dict_hash

    run = tmp_path_factory.mktemp("tiny_run")
    os.environ.setdefault("SALT_SEG_CACHE", str(tmp_path_factory.getbasetemp() / "svd_cache"))
    record = Preprocessing(
        intensity="minmax", image_size=S, classes={1: "liver", 2: "spleen tumour"}, prompt_mode="mixed"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = build_model("tiny", image_size=S, num_classes=2)
        base = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("class_tokens.")}
        save_file(base, str(run / "base.safetensors"))
        base_hash = state_dict_hash(base)
        config = AdapterConfig(name="salt", train_class_tokens=True)
        inject_adapters(model, config, base_hash=base_hash, svd_cache=False, progress=False)
        with torch.no_grad():  # move the adapter off identity so merged != base
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
    save_adapter(
        run / "adapter.safetensors",
        model,
        config,
        base_variant="tiny",
        base_hash=state_dict_hash(base),
        preprocessing=record,
        class_names=record.classes,
        extra={"base_variant": "tiny", "base_checkpoint": "run:base.safetensors", "step": 1},
    )
    (run / "config.yaml").write_text("model: {variant: tiny}\n")
    return run


def copy_run_with_data(run: Path, data: Path, dest: Path) -> Path:
    """A copy of ``run`` whose config names the shapes dataset ``data`` and whose split trains on ``shapes000``
    and tests on ``shapes003`` (a volume-level split, as training leaves one)."""
    import shutil

    from salt_seg.data.split import Split, SplitEntry, save_split

    shutil.copytree(run, dest)
    (dest / "config.yaml").write_text(f"model: {{variant: tiny}}\ndata: {{path: {data}}}\n")
    split = Split(
        "volume", shots=1, seed=0, axis=2, train=[SplitEntry("shapes000")], test=[SplitEntry("shapes003")]
    )
    save_split(split, dest / "split.json")
    return dest
