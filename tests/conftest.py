"""Shared test fixtures: tiny models and deterministic seeds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model():
    from salt_seg.model import build_model

    torch.manual_seed(1234)
    return build_model("tiny", num_classes=2)
