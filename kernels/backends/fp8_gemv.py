"""FP8-weight GEMV for the ``fp8_resident`` backend's single rows (FLUX's modulation, M = 1).

``y[m, N] = (x[m, K] @ float(w8[N, K])^T) * col_scale[N] + bias[N]`` with bf16/fp16 ``x`` (not
quantized: a GEMV is bound by the weight bytes, so the activation may keep its precision),
float32 accumulation, one rounding to ``x.dtype`` at the end.

Why not activation quantization + cuBLAS as for the other rows: at M = 1 that is three launches
(act-quant, ``_scaled_mm``, a bias add: cuBLAS cannot take the bias there, see
:data:`.w4a8.CUBLAS_BIAS_MIN_M`) and ~58-77 us of host time per compiled call on the H100's host,
against ~21 us for one Triton launch; FLUX runs 76 such calls a step.

Layout: ``w8`` is e4m3 ``[N, K]`` row-major, read as int32 words ``[N, K/4]``: byte ``j`` of word
``w`` (little-endian) is element ``4w + j``. Grid ``(N / BLOCK_N, M)``: one program per block of
output columns and row of ``x``; each sums ``BLOCK_K / 4`` words per iteration into a
``[BLOCK_N, BLOCK_K / 4]`` float32 accumulator (sm_89+ converts byte pairs to fp16 in hardware,
:func:`.fp4_decode_tl.e4m3_words_to_f32`), reduced once at the end.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..autotune import Config, pick_config
from ..tracing import triton_launcher
from .fp4_decode_tl import e4m3_words_to_f32, hardware_e4m3_convert
from .w4a16 import GEMV_CANDIDATES

# the W4A16 GEMV's tiles (the same loop over [BLOCK_N, words] tiles, tuned under its own key)
FP8_GEMV_CANDIDATES: list[Config] = GEMV_CANDIDATES


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, col_scale_ptr, bias_ptr, y_ptr,
    N, K_WORDS,
    stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HW_CVT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_w = tl.arange(0, BLOCK_K // 4)
    acc = tl.zeros((BLOCK_N, BLOCK_K // 4), dtype=tl.float32)
    for w0 in range(0, K_WORDS, BLOCK_K // 4):
        word = w0 + offs_w
        w_ok = word < K_WORDS
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + word[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0)
        b0, b1, b2, b3 = e4m3_words_to_f32(w.to(tl.uint32, bitcast=True), HW_CVT)
        x = x_ptr + row * stride_xm + word * 4
        acc += b0 * tl.load(x, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        acc += b1 * tl.load(x + 1, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        acc += b2 * tl.load(x + 2, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        acc += b3 * tl.load(x + 3, mask=w_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1) * tl.load(col_scale_ptr + offs_n, mask=n_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def fp8_gemv(x2d: torch.Tensor, w8: torch.Tensor, col_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2d`` bf16/fp16 ``[M, K]``, ``w8`` e4m3 ``[N, K]`` (``K`` a multiple of 4), ``col_scale``
    float32 ``[N]`` or 0-d -> ``[M, N]`` in ``x2d.dtype`` (see module doc). CUDA tensors (or
    Triton's interpreter)."""
    m, k = x2d.shape
    n = w8.shape[0]
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    words = w8.contiguous().view(torch.int32)
    col_scale = col_scale.to(torch.float32).expand(n).contiguous()  # a 0-d scale becomes [N] (the kernel indexes it)
    y = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    if m == 0:
        return y
    hw_cvt = hardware_e4m3_convert(x2d.device)

    def launch(cfg: Config) -> None:
        triton_launcher(_fp8_gemv_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]), m)](
            x2d, words, col_scale, bias, y,
            n, k // 4, x2d.stride(0), words.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, HW_CVT=hw_cvt, **cfg,
        )  # fmt: skip

    launch(pick_config("fp8_gemv", (m, n, k, str(x2d.dtype)), FP8_GEMV_CANDIDATES, launch))
    return y
