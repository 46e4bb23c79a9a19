"""Shared test helpers: skip markers with reasons, seeded generators."""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (none visible to torch)")
requires_comfyui = pytest.mark.skipif(
    not COMFYUI_PATH, reason="needs real ComfyUI source: set COMFYUI_PATH to a ComfyUI checkout"
)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test (fresh data, reproducible failures)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
