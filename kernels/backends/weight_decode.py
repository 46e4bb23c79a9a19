"""NVFP4 weight decode (Triton): to FP8 E4M3 for the W4A8 and fp8-resident backends, to bf16/fp16
for the W4A16 backend's large-M path. One kernel does both (``FP8_OUT``).

Dense (``decode_nvfp4_dense``): ``W[n, k] = e2m1 * (float(block_scale) * alpha[n])`` in float32,
rounded to nearest even in the output dtype: the same arithmetic as
:func:`kernels.nvfp4.nvfp4_dequantize` (ModelOpt's), so the same bytes.

FP8 (``decode_nvfp4_to_fp8``): output ``w8[N, K]`` (e4m3, row-major) and ``col_scale[N]`` (float32) with
``W[n, k] ~= float(w8[n, k]) * col_scale[n]``.

A decoded value ``e2m1 * block_scale`` reaches ``6 * 448 = 2688``, beyond e4m3's 448, and
small block scales fall into e4m3's subnormals. Each output row therefore gets a
power-of-two shift ``2**-e[n]`` with ``e[n] = ceil(log2(6 * max_b block_scale[n, b] / 448))``
(:func:`fp8_row_shift`, exact, computed once at load), so the row's largest value lands in
``(224, 448]``; ``col_scale[n] = alpha[n] * 2**e[n]`` undoes it in the GEMM epilogue.
The one rounding is ``e2m1 * scale * 2**-e`` to e4m3 (nearest even): the product has up to 5
significant bits and e4m3 keeps 4, so an element moves by at most 1/21 of its value (a mantissa
of 1.3125 is a tie and goes to 1.25); about half the products are exact.

On sm_89+ the FP8 decode reads int32 words of 8 codes and writes int64 words of 8 e4m3 bytes:
9 integer ops give each code's E4M3 form, the hardware converts pairs to fp16, one
``mul.f16x2`` applies block scale x row shift to a pair, one ``cvt.rn.satfinite.e4m3x2.f16x2``
rounds it (exact up to that rounding, so the same bytes; :mod:`.fp4_decode_tl`). H100: 2.5-3.0
TB/s against 1.6-2.1 for the float32 path (which Triton's CPU interpreter and older GPUs run).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..autotune import Config, pick_config
from ..e2m1 import e2m1_decode, unpack_nibbles
from ..tracing import is_tracing, triton_launcher
from .fp4_decode_tl import (
    decode_fp4_tile,
    e2m1_words_to_e4m3,
    e4m3_to_f32,
    hardware_e4m3_convert,
    scale_e2m1_words_to_e4m3,
)


def decode_nvfp4_to_fp8_torch(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    row_shift: torch.Tensor,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same decode in torch ops (for CPU tensors, e.g. ``fp8_resident`` prepared at load):
    identical float32 arithmetic and round-to-nearest-even, so identical bytes."""
    n, half_k = weight.shape
    k = half_k * 2
    values = e2m1_decode(unpack_nibbles(weight, "lo")).view(n, k // 16, 16)
    scale = (weight_scale.to(torch.float32) * row_shift.unsqueeze(1)).unsqueeze(-1)
    w8 = (values * scale).view(n, k).to(torch.float8_e4m3fn)
    if out is not None:
        out = _output_view(out, n, k)
        out.copy_(w8)
        w8 = out
    return w8, alpha.to(torch.float32) / row_shift


def _output_view(out: torch.Tensor, n: int, k: int, r: int = 0) -> torch.Tensor:
    """``out`` as the ``[N, K + R]`` tensor to write: a 2-D tensor with unit column stride as
    given, a flat buffer's prefix."""
    if out.ndim == 2:
        if tuple(out.shape) != (n, k + r) or out.stride(1) != 1:
            raise ValueError(f"decode output must be [{n}, {k + r}] with unit column stride, got {tuple(out.shape)}")
        return out
    return out[: n * (k + r)].view(n, k + r)


def fp8_row_shift(weight_scale: torch.Tensor) -> torch.Tensor:
    """Per-row multiplier ``2**-e[n]`` (float32 ``[N]``), ``e = ceil(log2(6 * max_b scale[n, b] / 448))``.

    Exact: ``frexp`` gives ``r = mant * 2**exp`` with ``mant`` in ``[0.5, 1)``, so
    ``ceil(log2(r))`` is ``exp``, or ``exp - 1`` when ``mant == 0.5``. Computed once at load.
    """
    smax = weight_scale.to(torch.float32).abs().amax(dim=1).clamp_min(2.0**-9)
    mant, exp = torch.frexp(smax * (6.0 / 448.0))
    e = exp - (mant == 0.5).to(exp.dtype)
    return torch.ldexp(torch.ones_like(smax), -e)


@triton.jit
def _decode_kernel(
    w_ptr, s_ptr, alpha_ptr, down_ptr, out_ptr, col_scale_ptr, extra_ptr,
    N, K, K_WORDS, R,
    stride_wn, stride_sn, stride_on, stride_en, stride_ww, stride_ow,
    ALPHA_PER_ROW: tl.constexpr, FP8_OUT: tl.constexpr, HW_CVT: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Grid (row blocks, K chunks): one [BLOCK_N, BLOCK_K] tile each. ``FP8_OUT``: codes x block
    scale x row shift (``down``) to e4m3, K chunk 0 writes ``col_scale = alpha / down``; otherwise
    codes x (block scale x alpha) to the output's dtype (``down_ptr``/``col_scale_ptr`` unused).
    ``BLOCK_R > 0``: K chunk 0 also copies ``extra[n, :R]`` to ``out[n, K:K + R]``.
    ``FP8_OUT`` and ``HW_CVT`` (sm_89+): the codes are read as int32 words of 8 and written as
    int64 words of 8 e4m3 bytes (``K_WORDS = K / 8`` of each a row; ``stride_ww``, ``stride_ow``:
    the row strides in those words), scaled and rounded by :func:`scale_e2m1_words_to_e4m3`;
    the same bytes as the float32 path. (Word counts are arguments of their own so that Triton
    sees their divisibility and vectorizes.) ``s_ptr`` points to the scales as uint8, or on that
    path as e4m3 (a type sm_89+ has; read through a uint8 pointer cast)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    if BLOCK_R > 0:
        if pid_k == 0:
            offs_r = tl.arange(0, BLOCK_R)
            r_ok = n_ok[:, None] & (offs_r < R)[None, :]
            extra = tl.load(extra_ptr + offs_n[:, None] * stride_en + offs_r[None, :], mask=r_ok)
            tl.store(out_ptr + offs_n[:, None] * stride_on + K + offs_r[None, :], extra, mask=r_ok)
    if ALPHA_PER_ROW:
        alpha = tl.load(alpha_ptr + offs_n, mask=n_ok, other=0.0)
    else:
        alpha = tl.load(alpha_ptr + offs_n * 0)
    if FP8_OUT:
        mult = tl.load(down_ptr + offs_n, mask=n_ok, other=1.0)
        if pid_k == 0:
            tl.store(col_scale_ptr + offs_n, alpha / mult, mask=n_ok)
    else:
        mult = alpha

    if FP8_OUT and HW_CVT:  # 8 codes a word, scaled and rounded in fp16 pairs (see module doc)
        kw = pid_k * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
        tile_ok = n_ok[:, None] & (kw < K_WORDS)[None, :]
        w32_ptr = w_ptr.to(tl.pointer_type(tl.uint32))
        words = tl.load(w32_ptr + offs_n[:, None] * stride_ww + kw[None, :], mask=tile_ok, other=0)
        ks = pid_k * (BLOCK_K // 16) + tl.arange(0, BLOCK_K // 16)  # one scale byte per 2 words
        sb = tl.load(
            s_ptr.to(tl.pointer_type(tl.uint8)) + offs_n[:, None] * stride_sn + ks[None, :],
            mask=n_ok[:, None] & (ks < K_WORDS // 2)[None, :],
            other=0,
        ).to(tl.int32)
        sb = tl.reshape(tl.join(sb, sb), [BLOCK_N, BLOCK_K // 8])
        even, odd = e2m1_words_to_e4m3(words)
        w8 = scale_e2m1_words_to_e4m3(even, odd, sb, tl.broadcast_to(mult[:, None], even.shape))
        tl.store(out_ptr.to(tl.pointer_type(tl.int64)) + offs_n[:, None] * stride_ow + kw[None, :], w8,
                 mask=tile_ok)  # fmt: skip
    else:
        k0 = pid_k * BLOCK_K
        kp = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(
            w_ptr + offs_n[:, None] * stride_wn + kp[None, :], mask=n_ok[:, None] & (kp < K // 2)[None, :], other=0
        )
        ks = k0 // 16 + tl.arange(0, BLOCK_K // 16)
        sb = tl.load(
            s_ptr + offs_n[:, None] * stride_sn + ks[None, :], mask=n_ok[:, None] & (ks < K // 16)[None, :], other=0
        )
        w = decode_fp4_tile(packed, e4m3_to_f32(sb) * mult[:, None], BLOCK_N, BLOCK_K)
        kk = k0 + tl.arange(0, BLOCK_K)
        tl.store(
            out_ptr + offs_n[:, None] * stride_on + kk[None, :],
            w.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
            mask=n_ok[:, None] & (kk < K)[None, :],
        )


# (BLOCK_N rows, BLOCK_K columns per step, warps); the first is the untuned default. The float32
# path (and the dense decode) runs best at 4-8 warps, the fp16-pair path with small programs of
# 1-2 warps (H100: 2.6-3.0 TB/s; bench/NOTES.md, session 8).
DECODE_CANDIDATES: list[Config] = [
    {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w}
    for bn, bk, w in [(32, 512, 4), (16, 1024, 4), (64, 256, 4), (32, 1024, 8), (16, 512, 4), (64, 512, 8),
                      (64, 1024, 8), (32, 2048, 8), (128, 512, 8), (16, 2048, 8), (128, 256, 8), (8, 2048, 4)]
]  # fmt: skip
FP8_DECODE_WORDS_CANDIDATES: list[Config] = [
    {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w}
    for bn, bk, w in [(2, 4096, 2), (8, 1024, 2), (4, 1024, 1), (16, 1024, 4), (4, 4096, 4), (8, 4096, 8),
                      (8, 2048, 4), (32, 1024, 8), (4, 2048, 2), (2, 2048, 1)]
]  # fmt: skip


def decode_nvfp4_to_fp8(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    out: torch.Tensor | None = None,
    row_shift: torch.Tensor | None = None,
    extra_columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode packed NVFP4 ``[N, K/2]`` to e4m3 ``[N, K]`` plus ``col_scale[N]`` (see module doc).

    ``out`` may be a reused flat scratch buffer with at least ``N * (K + R)`` elements, or an
    ``[N, K + R]`` tensor with unit column stride (``R = 0`` without ``extra_columns``);
    ``row_shift`` is :func:`fp8_row_shift` of ``weight_scale`` when the caller has it (computed
    here otherwise). ``extra_columns`` (e4m3 ``[N, R]``, e.g. a LoRA's ``B8``) is copied in the same
    launch to the ``R`` columns after each output row's ``K``. Returns the ``[N, K]`` decoded part
    and ``col_scale``.
    """
    if row_shift is None:
        row_shift = fp8_row_shift(weight_scale)
    n, half_k = weight.shape
    k = half_k * 2
    r = 0
    if extra_columns is not None:
        r = extra_columns.shape[1]
        if out is None or extra_columns.dtype != torch.float8_e4m3fn:
            raise ValueError("extra_columns needs e4m3 [N, R] and an [N, K + R] output")
    if out is None:
        out = torch.empty((n, k), dtype=torch.float8_e4m3fn, device=weight.device)
    out = _output_view(out, n, k, r)
    if not weight.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        w8, col_scale = decode_nvfp4_to_fp8_torch(weight, weight_scale, alpha, row_shift, out[:, :k])
        if extra_columns is not None:
            out[:, k:].copy_(extra_columns)
        return w8, col_scale
    col_scale = torch.empty(n, dtype=torch.float32, device=weight.device)
    alpha = alpha.to(torch.float32)
    _launch_decode("fp8_decode", weight, weight_scale, alpha, row_shift, out, k, col_scale, extra_columns)
    return out[:, :k], col_scale


def decode_nvfp4_dense(
    weight: torch.Tensor, weight_scale: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Decode packed NVFP4 ``[N, K/2]`` into ``out`` (``[N, K]`` bf16/fp16/fp32, or a flat scratch
    buffer of at least ``N * K`` elements of that dtype); returns the ``[N, K]`` view. Bytes equal
    :func:`kernels.nvfp4.nvfp4_dequantize` (see module doc). CUDA tensors (or Triton's interpreter)."""
    n, half_k = weight.shape
    out = _output_view(out, n, half_k * 2)
    alpha = alpha.to(torch.float32)
    _launch_decode("dense_decode", weight, weight_scale, alpha, None, out, out.shape[1], None)
    return out


def _word_aligned(t: torch.Tensor, nbytes: int) -> bool:
    """Whether every row of the byte matrix ``t`` starts on an ``nbytes`` boundary (the pointer is
    checked where it can be read: not while traced, where Inductor copies misaligned inputs)."""
    aligned = t.stride(0) % nbytes == 0 and t.storage_offset() % nbytes == 0
    return aligned and (is_tracing() or t.data_ptr() % nbytes == 0)


def _launch_decode(name, weight, weight_scale, alpha, row_shift, out, k, col_scale, extra=None) -> None:
    """One decode launch into the first ``k`` columns of ``out`` (``[N, K + R]``, the last ``R``
    from ``extra``). ``name`` is also the tuning key; ``fp8_decode`` writes e4m3 + col_scale.
    Pointer arguments a launch does not use are ``None`` (see :mod:`kernels.tracing`)."""
    n = out.shape[0]
    r = 0 if extra is None else extra.shape[1]
    fp8_out = name == "fp8_decode"
    words = (
        fp8_out and k % 8 == 0 and hardware_e4m3_convert(weight.device) and _word_aligned(weight, 4)
        and _word_aligned(out, 8)
    )  # fmt: skip

    # the word path reads the e4m3 scales through a uint8 pointer cast in the kernel (sm_89+ takes an
    # e4m3 pointer argument), which saves the compiled graph a dtype view op per call
    scales = weight_scale if words else weight_scale.view(torch.uint8)

    def launch(cfg: Config) -> None:
        triton_launcher(_decode_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(k, cfg["BLOCK_K"]))](
            weight, scales, alpha, row_shift, out, col_scale, extra,
            n, k, k // 8, r, weight.stride(0), weight_scale.stride(0), out.stride(0),
            0 if extra is None else extra.stride(0), weight.stride(0) // 4, out.stride(0) // 8,
            ALPHA_PER_ROW=alpha.ndim == 1, FP8_OUT=fp8_out, HW_CVT=words, BLOCK_R=triton.next_power_of_2(r) if r else 0,
            **cfg,
        )  # fmt: skip

    if words:
        launch(pick_config("fp8_decode_words", (n, k), FP8_DECODE_WORDS_CANDIDATES, launch))
    else:
        launch(pick_config(name, (n, k), DECODE_CANDIDATES, launch))
