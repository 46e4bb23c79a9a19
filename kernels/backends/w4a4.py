"""W4A4 (Blackwell's native NVFP4 GEMM): the math, pinned by an emulation.

A native FP4 GEMM (``torch._scaled_mm`` with ``float4_e2m1fn_x2`` operands on sm_100/103/120/121)
computes, for activations quantized by :func:`.nvfp4_act_quant.quantize_act_nvfp4` under the
global scale ``g_x`` and NVFP4 weights with global scale ``alpha``::

    y[m, n] = alpha[n] * g_x * sum_k e2m1(xq[m, k]) * s_x[m, k // 16] * e2m1(wq[n, k]) * s_w[n, k // 16]

i.e. the product of the two dequantized operands. :func:`w4a4_emulated_linear` computes exactly
that in float32 on any device; it is what the native path is tested against, and it equals
ModelOpt's W4A4 fake-quant linear (input and weight each quantized and dequantized, then a
linear). No Blackwell GPU was available here: the native call itself is not written yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nvfp4 import BLOCK_SIZE, nvfp4_dequantize
from ..scale_layout import unswizzle_scales
from .nvfp4_act_quant import quantize_act_nvfp4


def dequantize_act_nvfp4(packed: torch.Tensor, swizzled: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """float32 ``[M, K]`` from :func:`quantize_act_nvfp4`'s output."""
    m, half_k = packed.shape
    scales = unswizzle_scales(swizzled, m, half_k * 2 // BLOCK_SIZE)
    return nvfp4_dequantize(packed, scales, global_scale, dtype=torch.float32)


def w4a4_emulated_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None = None,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = dequant(quant_nvfp4(x)) @ dequant(W)^T + bias`` in float32, returned in ``x.dtype``.

    ``weight``/``weight_scale``/``alpha`` as in the op contract (:mod:`kernels.backends`);
    ``input_scale``: the static activation global scale, or ``None`` for a dynamic one."""
    k = weight.shape[1] * 2
    x2 = x.reshape(-1, k)
    xd = dequantize_act_nvfp4(*quantize_act_nvfp4(x2, input_scale))
    wd = nvfp4_dequantize(weight, weight_scale, alpha, dtype=torch.float32)
    y = F.linear(xd, wd, None if bias is None else bias.to(torch.float32))
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])
