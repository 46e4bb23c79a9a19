"""W4A8 backend (Hopper sm_90, Ada sm_89): NVFP4 weights stay 4-bit in VRAM, FP8 tensor cores compute.

Per call, for ``x[M, K]`` and a packed NVFP4 weight ``[N, K/2]``:

1. decode the layer's weight once to e4m3 ``[N, K]`` in a per-device scratch buffer
   (:mod:`.fp8_decode`: a memory-bound Triton pass; the buffer is reused by every layer,
   so only one layer's FP8 copy exists at a time);
2. quantize ``x`` to e4m3 with a dynamic per-token scale (:mod:`.fp8_act_quant`);
3. ``torch._scaled_mm`` (cuBLAS FP8, QGMMA on sm_90) with the row scales of ``x``, the
   column scales ``alpha[n] * 2**e[n]`` and the bias in its epilogue; bf16 out.

Small M (modulation rows) is bound by weight bytes, not arithmetic: there the W4A16 GEMV, which
reads the 4-bit weights directly, is used; W4A16 also takes shapes cuBLAS FP8 cannot (N or K not
a multiple of 16).

The ``fp8_resident`` backend is step 2-3 only, for weights decoded once at load
(:func:`make_fp8_resident`): more VRAM (1 byte per weight), less work per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register_backend
from .fp8_act_quant import quantize_act_fp8
from .fp8_decode import decode_nvfp4_to_fp8, fp8_row_shift
from .w4a16 import w4a16_fp4_linear

# At or below this many rows the W4A16 GEMV (which decodes once per row) beats decode + FP8 GEMM:
# 1.21x bf16 at M = 1, 0.35x at M = 4 where the FP8 path gives 0.62x (bench/h100_gemm_v6.json).
W4A8_SMALL_M = 1

_scratch: dict[torch.device, torch.Tensor] = {}


def _scratch_for(device: torch.device, numel: int) -> torch.Tensor:
    buf = _scratch.get(device)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float8_e4m3fn, device=device)
        _scratch[device] = buf
    return buf


def fp8_gemm_supports(n: int, k: int) -> bool:
    """cuBLAS FP8 needs N and K multiples of 16."""
    return n % 16 == 0 and k % 16 == 0


def fp8_scaled_mm(
    x2d: torch.Tensor, w8: torch.Tensor, col_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """``(q(x) @ w8^T) * row_scale * col_scale + bias`` with per-token FP8 activations."""
    q, row_scale = quantize_act_fp8(x2d)
    # cuBLAS row-wise scaling on sm_90 produces bf16 only; fp16 callers get a cast.
    y = torch._scaled_mm(
        q,
        w8.t(),
        scale_a=row_scale.unsqueeze(1),
        scale_b=col_scale.unsqueeze(0),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16,
        use_fast_accum=True,
    )
    return y if out_dtype == torch.bfloat16 else y.to(out_dtype)


def w4a8_fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None = None,
) -> torch.Tensor:
    """The op contract's function: decode once per call, FP8 GEMM (W4A16 for small M).
    ``aux`` is the weight's :func:`fp8_row_shift` (prepared at load), or ``None``."""
    n, half_k = weight.shape
    k = half_k * 2
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if m <= W4A8_SMALL_M or not fp8_gemm_supports(n, k):
        return w4a16_fp4_linear(x, weight, weight_scale, alpha, bias)
    w8, col_scale = decode_nvfp4_to_fp8(weight, weight_scale, alpha, out=_scratch_for(x.device, n * k), row_shift=aux)
    return fp8_scaled_mm(x2, w8, col_scale, bias, x.dtype).reshape(*x.shape[:-1], n)


def fp8_resident_fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None = None,
) -> torch.Tensor:
    """Op contract variant: ``weight`` is e4m3 ``[N, K]``, ``alpha`` the column scales ``[N]``;
    ``weight_scale`` is unused (empty)."""
    n, k = weight.shape
    if not fp8_gemm_supports(n, k):  # cuBLAS FP8 cannot take this shape: widen the weights instead
        return F.linear(x, (weight.to(torch.float32) * alpha.unsqueeze(1)).to(x.dtype), bias)
    return fp8_scaled_mm(x.reshape(-1, k), weight, alpha, bias, x.dtype).reshape(*x.shape[:-1], n)


def make_fp8_resident(
    weight: torch.Tensor, weight_scale: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode once (at load) for the ``fp8_resident`` backend: (e4m3 ``[N, K]``, column scales ``[N]``)."""
    return decode_nvfp4_to_fp8(weight, weight_scale, alpha)


register_backend("w4a8", w4a8_fp4_linear, prepare=fp8_row_shift)
register_backend("fp8_resident", fp8_resident_fp4_linear)
