"""NVFP4 activation quantization for native W4A4 GEMMs (Blackwell), in one Triton pass.

``x[M, K]`` (bf16/fp16/fp32, K a multiple of 16) and a float32 0-d global scale ``g``
(the checkpoint's static ``input_scale``, or ``amax(|x|) / (6 * 448)`` computed here) ->

* ``packed`` uint8 ``[M, K/2]``: E2M1 codes, the even-k element in the low nibble (ModelOpt's order);
* ``scales`` float8_e4m3fn in cuBLAS's 128x4 swizzled layout (:mod:`kernels.scale_layout`), shape
  ``[round_up(M, 128), round_up(K/16, 4)]``, padding zero: what a native FP4 GEMM reads directly;
* ``g``.

The math is ModelOpt's NVFP4 quantizer (:func:`kernels.nvfp4.nvfp4_quantize`), byte for byte:
per 16-element block ``s = amax / (6 * g)`` (zero blocks 1, clamped to ``[2**-9, 448]``, rounded
to e4m3), codes ``e2m1_round(x / (float(s) * g))`` ties to even, saturating at 6, sign bit only
for values < 0. ``g = 0`` (an all-zero ``x``) gives codes 0 and scales 1. Both divisions are IEEE
round-to-nearest (``tl.math.div_rn``): Triton's ``/`` on float32 is an approximate division on the
GPU, which moved values across E2M1 rounding ties (Triton's CPU interpreter divides exactly).
The dynamic ``g`` is :func:`kernels.nvfp4.nvfp4_global_scale` on ``x``'s device (CUDA divides by
the constant through a reciprocal multiply, so it can differ from a CPU quotient by one ulp).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..nvfp4 import BLOCK_SIZE, nvfp4_global_scale
from ..scale_layout import swizzled_shape
from ..tracing import triton_launcher


@triton.jit
def _e2m1_code(v):
    """Nearest E2M1 code (0..15) of float32 ``v``, ties to even, saturating (see kernels/e2m1.py)."""
    a = tl.abs(v)
    code = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
            + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
            + (a > 5.0).to(tl.int32))  # fmt: skip
    return code + (v < 0).to(tl.int32) * 8


@triton.jit
def _nvfp4_act_quant_kernel(
    x_ptr, g_ptr, q_ptr, s_ptr, M, KB, stride_xm, stride_qm, COL_TILES,
    BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """Grid (row blocks, K-block chunks): a [BLOCK_M, BLOCK_B * 16] tile of x each."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    blocks = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = (rows < M)[:, None] & (blocks < KB)[None, :]  # [BLOCK_M, BLOCK_B]
    cols = blocks[:, None] * 16 + tl.arange(0, 16)[None, :]  # [BLOCK_B, 16]
    x = tl.load(
        x_ptr + rows.to(tl.int64)[:, None, None] * stride_xm + cols[None, :, :], mask=ok[:, :, None], other=0.0
    ).to(tl.float32)
    g = tl.load(g_ptr)
    amax = tl.max(tl.abs(x), axis=2)
    s = tl.math.div_rn(amax, 6.0 * g)  # IEEE division: Triton's "/" is approximate on the GPU
    s = tl.where(s == 0, 1.0, s)
    s = tl.where(g == 0, 1.0, s)  # (amax / 0: an all-zero x)
    s = tl.minimum(tl.maximum(s, 0.001953125), 448.0).to(tl.float8e4nv, fp_downcast_rounding="rtne")
    divisor = s.to(tl.float32) * g
    v = tl.where(divisor[:, :, None] == 0, 0.0, tl.math.div_rn(x, tl.broadcast_to(divisor[:, :, None], x.shape)))
    code = tl.reshape(_e2m1_code(v), (BLOCK_M, BLOCK_B * 8, 2))
    even, odd = tl.split(code)
    byte = (even + odd * 16).to(tl.uint8)  # even element in the low nibble
    cols8 = tl.program_id(1) * BLOCK_B * 8 + tl.arange(0, BLOCK_B * 8)
    q_ok = (rows < M)[:, None] & (cols8 < KB * 8)[None, :]
    tl.store(q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols8[None, :], byte, mask=q_ok)
    # swizzled offset of scale (r, b): tile (r // 128, b // 4) in row-major tile order, 512 bytes
    # a tile, inside it (r % 32) * 16 + (r % 128 // 32) * 4 + b % 4
    r, b = rows[:, None], blocks[None, :]
    offset = ((r // 128) * COL_TILES + b // 4) * 512 + (r % 32) * 16 + (r % 128 // 32) * 4 + b % 4
    tl.store(s_ptr + offset, s, mask=ok)


def quantize_act_nvfp4(
    x2d: torch.Tensor, global_scale: torch.Tensor | None = None, block_m: int = 32, block_b: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(packed [M, K/2], swizzled e4m3 scales, global scale)`` of ``x2d`` (see module doc);
    ``global_scale``: the static input scale, or ``None`` for a dynamic one."""
    m, k = x2d.shape
    if k % BLOCK_SIZE:
        raise ValueError(f"K = {k} is not a multiple of the NVFP4 block size {BLOCK_SIZE}")
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    g = nvfp4_global_scale(x2d) if global_scale is None else global_scale
    g = g.to(device=x2d.device, dtype=torch.float32).reshape(())
    kb = k // BLOCK_SIZE
    prow, pcol = swizzled_shape(m, kb)
    packed = torch.empty((m, k // 2), dtype=torch.uint8, device=x2d.device)
    scales = torch.zeros((prow, pcol), dtype=torch.float8_e4m3fn, device=x2d.device)
    if m:
        grid = (triton.cdiv(m, block_m), triton.cdiv(kb, block_b))
        triton_launcher(_nvfp4_act_quant_kernel)[grid](
            x2d, g, packed, scales, m, kb, x2d.stride(0), packed.stride(0), pcol // 4,
            BLOCK_M=block_m, BLOCK_B=block_b,
        )  # fmt: skip
    return packed, scales, g
