"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator per test (fresh data, reproducible failures)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
