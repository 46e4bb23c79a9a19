"""The compile caches' key carries the package's fingerprint (kernels/compile_cache.py)."""

from __future__ import annotations

import pytest
import torch

from kernels import compile_cache

pytestmark = pytest.mark.skipif(
    not hasattr(getattr(torch.compiler, "config", None), "cache_key_tag"), reason="torch has no cache_key_tag"
)


def test_fingerprint_covers_sources_and_shipped_configs(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "gpu.json").write_text("{}")
    monkeypatch.setattr(compile_cache, "_PACKAGE_DIR", tmp_path)
    prints = []
    for change in (None, ("a.py", "x = 2\n"), ("tuned/gpu.json", '{"k": 1}'), ("notes.txt", "ignored")):
        if change:
            (tmp_path / change[0]).write_text(change[1])
        compile_cache.source_fingerprint.cache_clear()
        prints.append(compile_cache.source_fingerprint())
    compile_cache.source_fingerprint.cache_clear()
    assert len(set(prints[:3])) == 3, "a source or config change must change the fingerprint"
    assert prints[3] == prints[2], "files other than sources and configs do not count"


def test_tag_keeps_the_users_tag_and_replaces_an_older_fingerprint():
    with torch.compiler.config.patch(cache_key_tag=f"mine+{compile_cache.TAG_PREFIX}0123456789abcdef"):
        tag = compile_cache.tag_compile_caches()
        assert tag == f"mine+{compile_cache.TAG_PREFIX}{compile_cache.source_fingerprint()}"
        assert torch.compiler.config.cache_key_tag == tag
        assert compile_cache.tag_compile_caches() == tag, "idempotent"


def test_importing_the_op_tags_the_caches_where_the_traced_twin_exists():
    from kernels import fp4_linear_op

    if not fp4_linear_op._HAS_TRACED:
        pytest.skip("this torch/Triton has no triton_op: no traced twin, nothing to tag")
    assert compile_cache.TAG_PREFIX + compile_cache.source_fingerprint() in torch.compiler.config.cache_key_tag
