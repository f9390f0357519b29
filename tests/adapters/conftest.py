"""Fixtures for the adapter tests: a tiny SAM, its inputs, the adapter table, and a private SVD cache."""

from __future__ import annotations

import pytest
import torch

from salt_seg.model.sam import InputPrompt

#: every adapter, with the options worth checking separately; all on the `tiny` variant, neck included where
#: the adapter wraps layers
ADAPTER_CASES: dict[str, dict] = {
    "salt": {"name": "salt", "adapt_neck": True},
    "salt_relu_reference": {"name": "salt", "relu": "reference", "adapt_neck": True},
    "ssam": {"name": "ssam", "adapt_neck": True},
    "svfit": {"name": "svfit", "adapt_neck": True},
    "lora": {"name": "lora", "adapt_neck": True},
    "lora_qv": {"name": "lora", "lora_qv_only": True, "targets": ["image_encoder.blocks.*.attn.qkv"]},
    "effort": {"name": "effort", "adapt_neck": True},
    "full": {"name": "full"},
    "none": {"name": "none"},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny model's ops are small, and on a shared 2-core machine two spinning OpenMP
    threads make them 10-30x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _svd_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One SVD cache for the whole session, never the user's."""
    root = tmp_path_factory.getbasetemp() / "svd_cache"
    monkeypatch.setenv("SALT_SEG_CACHE", str(root))


def make_tiny(num_classes: int = 2):
    """A fresh `tiny` SamModel with the same weights every call (global RNG untouched)."""
    from salt_seg.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return build_model("tiny", num_classes=num_classes)


def make_inputs() -> tuple[torch.Tensor, list[InputPrompt]]:
    """Two 256² images, one with a box prompt and one with a learned class-token prompt."""
    g = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, 256, 256, generator=g)
    prompts = [InputPrompt(box=torch.tensor([20.0, 30.0, 180.0, 200.0])), InputPrompt(class_id=2)]
    return images, prompts


@pytest.fixture
def tiny():
    return make_tiny()


@pytest.fixture
def inputs():
    return make_inputs()
