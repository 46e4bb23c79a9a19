"""Shared fixtures. Without a GPU, Triton kernels run under Triton's interpreter on the CPU
(``TRITON_INTERPRET=1`` must be set before any kernel is defined, so it is set here)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton_interpreter_fixes
    except ImportError:  # no Triton: the Triton backends' tests skip
        pass
    else:
        triton_interpreter_fixes.install()


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test (fresh data, reproducible failures)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
