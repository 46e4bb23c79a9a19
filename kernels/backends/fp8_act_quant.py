"""Dynamic per-token FP8 activation quantization in one fused Triton pass.

``x[M, K]`` (bf16/fp16/fp32) -> ``q[M, K]`` e4m3 and ``scale[M]`` float32 with
``x[m, k] ~= float(q[m, k]) * scale[m]``, ``scale[m] = max(amax(|x[m]|) / 448, 1e-12)``.
Rows up to 16384 wide are held in registers and read once; wider rows take two sweeps
(the second from L2).

With ``extra[M, R]`` (a LoRA branch's ``x @ down^T``) the row is ``[x[m], extra[m]]``: the scale
covers both, ``q`` is ``[M, K + R]`` and its last ``R`` columns hold ``extra`` (so one FP8 GEMM
over ``K + R`` computes the layer and its LoRA branch together).

With ``wgmma_k_order`` (K a multiple of 128, one sweep, no ``extra``) column ``k`` of each 128-wide
chunk is stored at position ``4c + i + 16j`` for ``k = 32c + 4j + i`` (``c, i < 4``, ``j < 8``): the
order in which :mod:`.w4a8_swapab` feeds the weight columns to wgmma. With ``pdl`` (sm_90) the kernel
is launched with programmatic dependent launch: it starts as the previous kernel's blocks exit and
waits for that kernel's writes (``griddepcontrol.wait``) before it touches memory, and it lets a grid
launched after it the same way start at once (``griddepcontrol.launch_dependents``; that grid waits
for this one's writes itself). The launch then overlaps the previous kernel's end: on the H100, 512 x
3072 rows before the swap-AB GEMM, 15.7-16.0 -> 15.4-15.8 us for quantization + GEMM, the GEMM alone
13.5-13.9 (bench/NOTES.md, session 15).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..tracing import triton_launcher

FP8_MAX = tl.constexpr(448.0)
MIN_SCALE = tl.constexpr(1e-12)  # an all-zero row gets this scale (and zero codes) instead of 0/0
SINGLE_SWEEP_MAX_K = 16384


@triton.jit
def _act_quant_kernel(
    x_ptr, e_ptr, q_ptr, s_ptr, K, R, stride_xm, stride_em, stride_qm,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, ONE_SWEEP: tl.constexpr, HAS_EXTRA: tl.constexpr,
    WGMMA_K_ORDER: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:
        tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=tl.int32, is_pure=False,
                                  pack=1)  # fmt: skip
        tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    amax = 0.0
    if HAS_EXTRA:
        offs_r = tl.arange(0, BLOCK_R)
        e = tl.load(e_ptr + row * stride_em + offs_r, mask=offs_r < R, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(e), axis=0)
    if ONE_SWEEP:
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.maximum(tl.max(tl.abs(x), axis=0), amax) / FP8_MAX, MIN_SCALE)
        q = tl.minimum(tl.maximum(x * (1.0 / scale), -FP8_MAX), FP8_MAX)
        dest = offs
        if WGMMA_K_ORDER:  # k = 32c + 4j + i of each 128 chunk -> 4c + i + 16j
            dest = (offs & ~127) | (offs & 3) | (((offs >> 5) & 3) << 2) | (((offs >> 2) & 7) << 4)
        tl.store(q_ptr + row * stride_qm + dest, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=offs < K)
    else:
        amax_k = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs
            x = tl.load(x_ptr + row * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)
            amax_k = tl.maximum(amax_k, tl.abs(x))
        scale = tl.maximum(tl.maximum(tl.max(amax_k, axis=0), amax) / FP8_MAX, MIN_SCALE)
        inv = 1.0 / scale
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs
            x = tl.load(x_ptr + row * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(x * inv, -FP8_MAX), FP8_MAX)
            tl.store(q_ptr + row * stride_qm + kk, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=kk < K)
    if HAS_EXTRA:
        qe = tl.minimum(tl.maximum(e * (1.0 / scale), -FP8_MAX), FP8_MAX)
        tl.store(q_ptr + row * stride_qm + K + offs_r, qe.to(tl.float8e4nv, fp_downcast_rounding="rtne"),
                 mask=offs_r < R)  # fmt: skip
    tl.store(s_ptr + row, scale)


def quantize_act_fp8(
    x2d: torch.Tensor,
    extra: torch.Tensor | None = None,
    wgmma_k_order: bool = False,
    pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row dynamic FP8 quantization of a 2-D activation, optionally with ``extra`` columns
    appended, or with its columns in ``wgmma_k_order``, or launched with ``pdl`` (sm_90; see module doc):
    ``(q [M, K (+ R)], scale [M])``."""
    m, k = x2d.shape
    if wgmma_k_order and not (extra is None and k % 128 == 0 and k <= SINGLE_SWEEP_MAX_K):
        raise ValueError(f"wgmma_k_order needs K a multiple of 128 up to {SINGLE_SWEEP_MAX_K} and no extra columns")
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    r = 0 if extra is None else extra.shape[1]
    if extra is not None and extra.stride(-1) != 1:
        extra = extra.contiguous()
    q = torch.empty((m, k + r), dtype=torch.float8_e4m3fn, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    if m:
        one_sweep = k <= SINGLE_SWEEP_MAX_K
        block_k = triton.next_power_of_2(k) if one_sweep else 4096
        # H100, GPU time per call (session 14): K = 3072 4 warps 3.3 us vs 8 warps 3.6 at M = 512, 14.7 vs
        # 16.2 at M = 4096; K = 12288 8 warps 8.6 vs 16 warps 8.9
        warps = 4 if block_k <= 4096 else 8
        triton_launcher(_act_quant_kernel)[(m,)](
            x2d, extra, q, scale, k, r, x2d.stride(0),
            0 if extra is None else extra.stride(0), q.stride(0),
            BLOCK_K=block_k, BLOCK_R=triton.next_power_of_2(max(r, 1)), ONE_SWEEP=one_sweep,
            HAS_EXTRA=extra is not None, WGMMA_K_ORDER=wgmma_k_order, PDL=pdl,
            num_warps=warps, **({"launch_pdl": True} if pdl else {}),
        )  # fmt: skip
    return q, scale
