"""Skip markers with reasons, shared by test modules."""

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
