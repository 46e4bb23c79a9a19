"""W4A4 building blocks (Blackwell's native NVFP4 path), checked without Blackwell hardware.

The Triton activation quantizer must equal ModelOpt's NVFP4 quantizer (through the pack's
ModelOpt-exact ``nvfp4_quantize``) byte for byte and write cuBLAS's swizzled scale layout
(through ``swizzle_scales``, itself checked against comfy-kitchen); the float32 emulation of the
native GEMM must equal ModelOpt's W4A4 fake-quant linear. On a GPU the kernel runs natively,
without one under Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch
from markers import HAS_CUDA

from kernels import nvfp4_dequantize, nvfp4_quantize, swizzle_scales
from kernels.nvfp4 import nvfp4_global_scale
from kernels.triton_support import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
SHAPES = [(1, 16), (5, 48), (130, 272), (256, 64), (33, 3072)]  # M not a multiple of 128, K/16 not of 4


def activations(m: int, k: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(m, k, generator=gen)
    if kind == "outliers":  # FLUX-like: a few channels 100x larger
        x[:, torch.randint(0, k, (max(1, k // 64),), generator=gen)] *= 100
    elif kind == "zero_blocks":
        x.view(m, k // 16, 16)[torch.rand(m, k // 16, generator=gen) < 0.3] = 0
    elif kind == "ties":  # values on E2M1 rounding ties once scaled (block amax 6, g = 1/448 -> s = 448)
        ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
        x = torch.cat([ties, -ties]).repeat(m, k // 16)
    return x


@pytest.mark.parametrize("static", [True, False], ids=["input_scale", "dynamic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("kind", ["normal", "outliers", "zero_blocks", "ties"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_act_quant_equals_modelopt_math_and_swizzles(shape, kind, dtype, static, gen):
    from kernels.backends.nvfp4_act_quant import quantize_act_nvfp4

    m, k = shape
    x = activations(m, k, kind, gen).to(dtype)
    g = nvfp4_global_scale(x) * 1.5 if static else None  # a calibrated scale above this batch's amax
    if kind == "ties":
        g = torch.tensor(6.0 / (6 * 448)) if static else None
    packed, scales, g_used = quantize_act_nvfp4(x.to(DEVICE), None if g is None else g.to(DEVICE))
    g_used = g_used.cpu()
    if static:
        assert torch.equal(g_used, g.float())
    else:  # the global scale as torch computes it on x's device (CUDA: within an ulp of the CPU's)
        assert torch.equal(g_used, nvfp4_global_scale(x.to(DEVICE)).cpu())
        assert torch.allclose(g_used, nvfp4_global_scale(x), rtol=2**-23, atol=0)
    ref_packed, ref_scales, _ = nvfp4_quantize(x, g_used)  # ModelOpt's math under the same global scale
    assert torch.equal(packed.cpu(), ref_packed)
    assert torch.equal(scales.cpu().view(torch.uint8), swizzle_scales(ref_scales).view(torch.uint8))


def test_act_quant_all_zero_and_modelopt_oracle(gen):
    from kernels.backends.nvfp4_act_quant import quantize_act_nvfp4

    packed, scales, g = quantize_act_nvfp4(torch.zeros(4, 32, device=DEVICE))
    assert g.item() == 0 and not packed.any() and torch.isfinite(scales.float()).all()
    nvfp4_qtensor = pytest.importorskip("modelopt.torch.quantization.qtensor", reason="ModelOpt is the oracle")
    x = activations(40, 128, "outliers", gen).to(torch.bfloat16)
    input_scale = nvfp4_global_scale(x) * 1.25
    ref, ref_scale, _ = nvfp4_qtensor.NVFP4QTensor.quantize(x.clone(), 16, weights_scaling_factor_2=input_scale)
    packed, scales, _ = quantize_act_nvfp4(x.to(DEVICE), input_scale.to(DEVICE))
    assert torch.equal(packed.cpu(), ref._quantized_data)
    assert torch.equal(scales.cpu().view(torch.uint8), swizzle_scales(ref_scale).view(torch.uint8))


@pytest.mark.parametrize("static", [True, False], ids=["input_scale", "dynamic"])
def test_emulated_w4a4_equals_modelopt_fake_quant_linear(static, gen):
    """ModelOpt's W4A4 semantics: quantize-dequantize the input (static input_scale, or the
    batch's amax) and the weight, then a linear; the emulation must be that exactly."""
    nvfp4_qtensor = pytest.importorskip("modelopt.torch.quantization.qtensor", reason="ModelOpt is the oracle")
    from kernels.backends.w4a4 import w4a4_emulated_linear

    qt = nvfp4_qtensor.NVFP4QTensor
    w = torch.randn(96, 256, generator=gen) * 0.05
    x = activations(3 * 20, 256, "outliers", gen).reshape(3, 20, 256).to(torch.bfloat16)
    bias = torch.randn(96, generator=gen).to(torch.bfloat16)
    input_scale = nvfp4_global_scale(x) * 1.1 if static else None
    wq, ws, wg = qt.quantize(w.clone(), 16)
    w_fq = wq.dequantize(dtype=torch.float32, scale=ws, double_scale=wg, block_sizes={-1: 16})
    x2 = x.reshape(-1, 256)
    kwargs = {} if input_scale is None else {"weights_scaling_factor_2": input_scale}
    xq, xs, xg = qt.quantize(x2.clone(), 16, **kwargs)
    x_fq = xq.dequantize(dtype=torch.float32, scale=xs, double_scale=xg, block_sizes={-1: 16})
    expected = torch.nn.functional.linear(x_fq, w_fq, bias.float()).to(torch.bfloat16).reshape(3, 20, 96)

    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    y = w4a4_emulated_linear(dev(x), dev(wq._quantized_data), dev(ws), dev(wg), dev(bias), dev(input_scale))
    assert y.shape == (3, 20, 96) and y.dtype == torch.bfloat16
    # identical operands; only float32 summation order may differ (CPU vs GPU matmul)
    assert torch.allclose(y.cpu().float(), expected.float(), rtol=1e-2, atol=1e-3 * expected.abs().max().item())
    if DEVICE.type == "cpu":
        assert torch.equal(y, expected)
    w_ours = nvfp4_dequantize(wq._quantized_data, ws, wg, dtype=torch.float32)
    assert torch.equal(w_ours, w_fq)


def test_w4a4_backend_uses_the_static_input_scale(gen):
    """A layer's checkpoint ``input_scale`` reaches the W4A4 activation quantizer through the op
    (FP4Linear carries it, its state dict keeps it); without one the scale is the batch's amax."""
    from torch import nn

    from kernels import FP4Linear, fp4_linear
    from kernels.backends.w4a4 import w4a4_emulated_linear

    dense = nn.Linear(128, 48)
    layer = FP4Linear.from_linear(dense)
    x = activations(12, 128, "outliers", gen).to(torch.bfloat16)
    input_scale = nvfp4_global_scale(x) * 3  # a calibrated range 3x this batch's: coarser activation codes
    args = [t.to(DEVICE) for t in (x, layer.weight, layer.weight_scale, layer.weight_scale_2)]
    static = fp4_linear(*args, None, "w4a4", input_scale=input_scale.to(DEVICE))
    dynamic = fp4_linear(*args, None, "w4a4")
    assert torch.equal(static, w4a4_emulated_linear(*args, None, input_scale.to(DEVICE)))
    assert torch.equal(dynamic, w4a4_emulated_linear(*args, None, None))
    assert not torch.equal(static, dynamic)

    layer = FP4Linear.from_quantized(layer.weight, layer.weight_scale, layer.weight_scale_2, layer.bias,
                                     backend="w4a4", input_scale=input_scale)  # fmt: skip
    assert torch.equal(layer.state_dict()["input_scale"], input_scale)
    layer = layer.to(DEVICE)
    expected = w4a4_emulated_linear(x.to(DEVICE), layer.weight, layer.weight_scale, layer.weight_scale_2,
                                    layer.bias, layer.input_scale)  # fmt: skip
    assert torch.equal(layer(x.to(DEVICE)), expected)


def test_native_check_first_run_inside_a_compile_trace_runs_outside_it(monkeypatch):
    """A compiled model whose first W4A4 call is traced (no warmup) runs the one-off native-GEMM
    check on real tensors with the trace's modes and flag off, caches it, and does not recurse."""
    from kernels.backends import w4a4
    from kernels.tracing import is_tracing, tracing

    seen = []
    monkeypatch.setattr(w4a4, "_native_ok", {})
    monkeypatch.setattr(w4a4, "_compare_native_with_emulation", lambda d: seen.append(is_tracing()) or (False, "x"))
    with tracing():
        assert w4a4.native_w4a4_check("cpu") == (False, "x")
        assert w4a4.native_w4a4_check("cpu") == (False, "x")
        assert is_tracing()
    assert seen == [False]
