"""Dynamic per-token FP8 activation quantization in one fused Triton pass.

``x[M, K]`` (bf16/fp16/fp32) -> ``q[M, K]`` e4m3 and ``scale[M]`` float32 with
``x[m, k] ~= float(q[m, k]) * scale[m]``, ``scale[m] = max(amax(|x[m]|) / 448, 1e-12)``.
One program per row: a first sweep finds the row's amax, the second (from L2) writes codes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0
MIN_SCALE = 1e-12


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs
        x = tl.load(x_ptr + row * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0) / 448.0, 1e-12)
    inv = 1.0 / scale
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs
        x = tl.load(x_ptr + row * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x * inv, -448.0), 448.0)
        tl.store(q_ptr + row * stride_qm + kk, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=kk < K)
    tl.store(s_ptr + row, scale)


def quantize_act_fp8(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row dynamic FP8 quantization of a 2-D activation (see module doc)."""
    m, k = x2d.shape
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    if m:
        block_k = min(2048, triton.next_power_of_2(k))
        _act_quant_kernel[(m,)](
            x2d, q, scale, k, x2d.stride(0), q.stride(0), BLOCK_K=block_k, num_warps=4 if block_k <= 1024 else 8
        )
    return q, scale
