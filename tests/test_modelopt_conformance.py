"""The pack's NVFP4 quantizer equals nvidia-modelopt's, byte for byte.

Oracle: ``modelopt.torch.quantization.qtensor.NVFP4QTensor`` (quantize + dequantize),
which runs on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from kernels import nvfp4_dequantize, nvfp4_quantize

NVFP4QTensor = pytest.importorskip(
    "modelopt.torch.quantization.qtensor", reason="nvidia-modelopt is the oracle"
).NVFP4QTensor

SHAPES = [(16, 16), (64, 256), (3072 // 16, 3072 // 4), (37, 48), (1, 512)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _tie_block(scale: float) -> torch.Tensor:
    """16 values that land exactly on E2M1 rounding ties once divided by ``scale``."""
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]
    return torch.tensor(ties + [-t for t in ties]) * scale


def make_weight(kind: str, shape: tuple[int, int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    n, k = shape
    if kind == "normal":
        w = torch.randn(n, k, generator=gen) * 0.02
    elif kind == "heavy_tailed":  # Student-t with 1.5 degrees of freedom: rare huge outliers
        z = torch.randn(n, k, generator=gen)
        chi = torch.randn(n, k, 2, generator=gen).pow(2).sum(-1) / 1.5
        w = z / chi.sqrt().clamp_min(1e-3) * 0.01
    elif kind == "zero_blocks":
        w = torch.randn(n, k, generator=gen)
        mask = torch.rand(n, k // 16, generator=gen) < 0.3
        w = w.view(n, k // 16, 16).masked_fill(mask.unsqueeze(-1), 0.0).view(n, k)
    elif kind == "tiny_amax":
        w = torch.randn(n, k, generator=gen) * (1e-6 if dtype == torch.float16 else 1e-20)
    elif kind == "huge_amax":
        w = torch.randn(n, k, generator=gen) * (1e3 if dtype == torch.float16 else 1e30)
    elif kind == "ties":
        # One block with amax 2688 makes the global scale exactly 1; the other blocks are
        # power-of-two multiples of the tie values, so every element sits on a tie.
        blocks = [_tie_block(2.0 ** int(torch.randint(-3, 3, (), generator=gen))) for _ in range(n * k // 16)]
        w = torch.stack(blocks).view(n, k)
        w[0, 0] = 2688.0
    else:
        raise ValueError(kind)
    return w.to(dtype)


KINDS = ["normal", "heavy_tailed", "zero_blocks", "tiny_amax", "huge_amax", "ties"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_matches_modelopt_byte_for_byte(kind, shape, dtype, gen):
    w = make_weight(kind, shape, dtype, gen)
    packed, block_scale, global_scale = nvfp4_quantize(w)
    ref, ref_scale, ref_global = NVFP4QTensor.quantize(w.clone(), 16)

    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], shape[1] // 2)
    assert block_scale.dtype == torch.float8_e4m3fn and block_scale.shape == (shape[0], shape[1] // 16)
    assert global_scale.dtype == torch.float32 and global_scale.ndim == 0
    assert torch.equal(packed, ref._quantized_data)
    assert torch.equal(block_scale.view(torch.uint8), ref_scale.view(torch.uint8))
    assert torch.equal(global_scale, ref_global)


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_matches_modelopt(kind, out_dtype, gen):
    w = make_weight(kind, (48, 128), torch.bfloat16, gen)
    ref, ref_scale, ref_global = NVFP4QTensor.quantize(w.clone(), 16)
    expected = ref.dequantize(dtype=out_dtype, scale=ref_scale, double_scale=ref_global, block_sizes={-1: 16})
    got = nvfp4_dequantize(ref._quantized_data, ref_scale, ref_global, dtype=out_dtype)
    assert got.dtype == out_dtype
    assert torch.equal(got, expected)


def test_ties_round_to_even_codes():
    """The documented tie table: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4, 7->6."""
    w = torch.zeros(1, 32)
    w[0, 0] = 2688.0  # block 0: makes the global scale exactly 1
    w[0, 16:24] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])  # block 1: amax 6, scale 1
    w[0, 24:32] = -w[0, 16:24]
    packed, block_scale, global_scale = nvfp4_quantize(w)
    assert global_scale.item() == 1.0 and block_scale[0, 1].float().item() == 1.0
    decoded = nvfp4_dequantize(packed, block_scale, global_scale, dtype=torch.float32)[0, 16:32]
    rounded = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0])
    assert torch.equal(decoded, torch.cat([rounded, -rounded]))


def test_all_zero_weight_dequantizes_to_zero():
    packed, block_scale, global_scale = nvfp4_quantize(torch.zeros(8, 32))
    assert global_scale.item() == 0.0
    assert torch.isfinite(block_scale.float()).all()
    assert torch.equal(nvfp4_dequantize(packed, block_scale, global_scale, dtype=torch.float32), torch.zeros(8, 32))


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.randn(4, 24), "multiple of the NVFP4 block size"),
        (torch.randn(2, 4, 16), "2-D"),
        (torch.tensor([[float("nan")] * 16]), "NaN or inf"),
        (torch.randint(0, 3, (4, 16)), "float32/bfloat16/float16"),
    ],
)
def test_quantize_rejects_bad_weights(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        nvfp4_quantize(bad)
