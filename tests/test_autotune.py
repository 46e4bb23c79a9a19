"""The tuner's cache lookups (no GPU: hits and defaults never benchmark)."""

from __future__ import annotations

import pytest

from kernels import autotune


@pytest.fixture
def empty_cache(monkeypatch):
    monkeypatch.setattr(autotune, "_cache", {})
    return autotune._cache


def _never(cfg):
    raise AssertionError("a cache hit or a default must not launch")


def test_cached_config_is_used(empty_cache):
    candidates = [{"BLOCK_N": 8, "num_warps": 2}, {"BLOCK_N": 4, "num_warps": 1}]
    empty_cache[autotune.cache_key("k", (1, 2))] = {"BLOCK_N": 4, "num_warps": 1}
    assert autotune.pick_config("k", (1, 2), candidates, _never) == {"BLOCK_N": 4, "num_warps": 1}


def test_config_of_an_older_kernel_version_is_a_miss(empty_cache):
    """A user cache written before the kernel lost its USE_LUT parameter must not be launched."""
    candidates = [{"BLOCK_N": 8, "num_warps": 2}, {"BLOCK_N": 4, "num_warps": 1}]
    empty_cache[autotune.cache_key("k", (1, 2))] = {"BLOCK_N": 8, "num_warps": 4, "USE_LUT": 1}
    assert autotune.pick_config("k", (1, 2), candidates, _never) == candidates[0]


def test_a_candidate_shape_other_than_the_first_is_a_hit(empty_cache):
    """Paths with different parameters (decode + cuBLAS vs a tiled kernel) share one key."""
    candidates = [{"BLOCK_M": 64, "BLOCK_N": 64}, {"DENSE": 1}]
    empty_cache[autotune.cache_key("k", (3,))] = {"DENSE": 1}
    assert autotune.pick_config("k", (3,), candidates, _never) == {"DENSE": 1}
