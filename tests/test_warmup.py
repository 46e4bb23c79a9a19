"""Warmup: which GEMM shapes a FLUX layer sees, and that each distinct one runs once."""

from __future__ import annotations

import pytest
import torch

from kernels import FP4Linear
from kernels.flux_shapes import flux_block_gemms
from kernels.warmup import rows_for, warmup_fp4_layers


@pytest.mark.parametrize("shape", flux_block_gemms(1024, 1024), ids=lambda s: s.name)
def test_rows_match_the_flux_shape_table(shape):
    name = shape.name.replace("*", "7")
    assert rows_for(name, 1024, 1024, batch=1, text_tokens=512) == shape.m


def test_rows_scale_with_batch_and_resolution():
    assert rows_for("double_blocks.0.img_attn.qkv", 512, 768, batch=2, text_tokens=256) == 2 * 32 * 48
    assert rows_for("single_blocks.3.linear1", 512, 512, batch=2, text_tokens=256) == 2 * (1024 + 256)
    assert rows_for("double_blocks.0.txt_mod.lin", 512, 512, batch=2, text_tokens=256) == 2
    assert rows_for("img_in", 512, 512, batch=1, text_tokens=256) is None


class _Layer(FP4Linear):
    """An FP4Linear with the attributes the ComfyUI layer has (is_fp4, fp4_backend)."""

    is_fp4 = True

    @property
    def fp4_backend(self) -> str:
        return self.backend


def test_each_distinct_shape_runs_once(monkeypatch):
    calls = []
    import kernels.warmup as warmup

    real = warmup.fp4_linear
    monkeypatch.setattr(warmup, "fp4_linear", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a))
    same = _Layer.from_linear(torch.nn.Linear(64, 96))
    layers = [("double_blocks.0.img_attn.qkv", same), ("double_blocks.1.img_attn.qkv", same),
              ("double_blocks.0.txt_attn.qkv", same), ("single_blocks.0.linear2", _Layer.from_linear(
                  torch.nn.Linear(128, 64)))]  # fmt: skip
    stats = warmup_fp4_layers(layers, torch.device("cpu"), torch.bfloat16, 64, 64, (1, 2), 8)
    # 16 image tokens, 8 text tokens, 24 joint; batch 1 and 2. The 96x64 layer sees M = 16, 32 (image)
    # and 8, 16 (text: 16 is already warmed), the 64x128 one M = 24, 48: five distinct GEMMs.
    assert stats["shapes"] == len(calls) == 5
    assert sorted(calls) == [(8, 64), (16, 64), (24, 128), (32, 64), (48, 128)]


def test_layers_with_a_lora_warm_the_lora_variant(monkeypatch):
    """A layer that will run with a LoRA branch is warmed with a branch of the same (padded) rank,
    so the kernels' LoRA variants compile in the warmup, not in the first step."""
    seen = []
    import kernels.warmup as warmup

    real = warmup.fp4_linear
    monkeypatch.setattr(warmup, "fp4_linear", lambda x, *a: seen.append((tuple(x.shape), a[-1])) or real(x, *a))
    layer = _Layer.from_linear(torch.nn.Linear(64, 96))
    layers = [("double_blocks.0.img_attn.qkv", layer), ("double_blocks.1.img_attn.qkv", layer)]
    stats = warmup_fp4_layers(layers, torch.device("cpu"), torch.bfloat16, 64, 64, (1,), 8,
                              lora_ranks={"double_blocks.1.img_attn.qkv": 12})  # fmt: skip
    assert stats["shapes"] == 2  # same GEMM once without and once with the branch
    loras = sorted((lora is not None) for _, lora in seen)
    assert loras == [False, True]
    down, up = next(lora for _, lora in seen if lora is not None)
    assert down.shape == (12, 64) and up.shape == (96, 12) and down.dtype == up.dtype == torch.bfloat16
