"""Shared test fixtures: tiny models and deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread: the models here are tiny, and on a shared 2-core machine two spinning OpenMP threads per
# process slow everything down many times over. Override with SALT_SEG_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("SALT_SEG_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model():
    from salt_seg.model import build_model

    torch.manual_seed(1234)
    return build_model("tiny", num_classes=2)
