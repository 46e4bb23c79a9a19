"""W4A16 backend: FP4 weights, bf16/fp16 activations and tensor cores (Ampere; any GPU without FP8).

``y[M, N] = (x[M, K] @ (e2m1 * block_scale * alpha)[N, K]^T) + bias``. Three paths, chosen per
shape by the tuner (:func:`kernels.autotune.pick_config`; the untuned default in brackets):

* GEMV (``M <= GEMV_MAX_M``): no tensor cores, one program per (N block, row); reads the 4-bit
  weights once per row, as uint32 words of 8 codes (tiles ``[BLOCK_N, BLOCK_K/8]``). Each word
  becomes two words of 4 E4M3 bytes (:func:`e2m1_words_to_e4m3`, 9 integer ops) that sm_89+
  converts in hardware (:func:`e4m3_words_to_f32`): on the H100 the modulation GEMV
  (3072 -> 18432) went from 35 us (a 256-entry pair table in L1) or 42 us (per-nibble arithmetic)
  to 25 us (bench/NOTES.md, session 7). The block scale multiplies the sum of a word's 8 products.
* fused GEMM [``M <= FUSED_DEFAULT_MAX_M``]: a tiled ``tl.dot`` GEMM that decodes each weight tile
  in registers (:func:`decode_fp4_tile`), once per M tile, accumulating in float32; ``alpha`` and
  bias in the epilogue.
* decode + cuBLAS [larger M]: the layer is decoded once per call into the per-device scratch
  (:func:`decode_nvfp4_dense`, bytes identical to ``nvfp4_dequantize``) and multiplied by cuBLAS
  (``addmm``); the same numbers as the reference backend, with a decode that runs near memory
  bandwidth. At large M the fused kernel decodes every weight tile once per M tile and loses.

Decoded weights (code x e4m3 scale) are exact in bf16/fp16; the fused and GEMV paths apply
``alpha`` after accumulation, the decode path folds it into the weights (one rounding, as the
reference does).

Tensor layouts are the op contract's (:mod:`kernels.backends`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..autotune import Config, pick_config
from ..tracing import triton_launcher
from . import add_low_rank, register_backend
from .fp4_decode_tl import decode_fp4_tile, e2m1_words_to_e4m3, e4m3_to_f32, e4m3_words_to_f32, hardware_e4m3_convert
from .reference import reference_fp4_linear
from .scratch import scratch
from .weight_decode import decode_nvfp4_dense

GEMV_MAX_M = 4
GEMM_GROUP_M = 8  # the fused kernel's M-tile grouping (L2 reuse of weight tiles); passed at every launch


# Above this many rows the untuned default is decode + cuBLAS: on the H100 (qkv 3072 -> 9216) the
# tuner picked the fused kernel at M = 16 only (bench/h100_gemm_v8.json, bench/NOTES.md).
FUSED_DEFAULT_MAX_M = 16
DECODE_THEN_CUBLAS: Config = {"DENSE": 1}


def _gemm_candidates(m: int) -> list[Config]:
    """Paths worth trying for ``m`` rows: the fused kernel's tile configs and decode + cuBLAS;
    the first is the untuned default."""
    small = [(16, 64, 256, 4, 4), (16, 128, 128, 4, 4), (32, 64, 256, 4, 4), (32, 128, 128, 4, 4),
             (16, 64, 128, 4, 4)]  # fmt: skip
    medium = [(64, 128, 128, 8, 3), (64, 64, 128, 4, 4), (64, 128, 64, 4, 4), (128, 64, 128, 8, 3)]
    large = [(128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (128, 64, 128, 4, 4)]
    table = small if m <= 32 else medium if m <= 128 else large
    fused = [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": st}
             for bm, bn, bk, w, st in table]  # fmt: skip
    return [*fused, DECODE_THEN_CUBLAS] if m <= FUSED_DEFAULT_MAX_M else [DECODE_THEN_CUBLAS, *fused]


GEMV_CANDIDATES: list[Config] = [
    {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w}
    for bn, bk, w in [(8, 512, 2), (4, 1024, 1), (4, 512, 1), (8, 1024, 2), (16, 512, 4), (16, 256, 2), (8, 256, 1)]
]


def m_bucket(m: int) -> int:
    """Tuning key for M: powers of two up to 4096, so nearby token counts share a config."""
    return min(triton.next_power_of_2(max(m, 1)), 4096)


@triton.jit
def _epilogue(acc, alpha_ptr, bias_ptr, offs_n, n_ok, ALPHA_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr):
    if ALPHA_PER_ROW:
        acc = acc * tl.load(alpha_ptr + offs_n, mask=n_ok, other=0.0)
    else:
        acc = acc * tl.load(alpha_ptr)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _w4a16_gemm_kernel(
    x_ptr, w_ptr, s_ptr, alpha_ptr, bias_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_sn, stride_ym,
    ALPHA_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)
    offs_ks = tl.arange(0, BLOCK_K // 16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & (kk < K)[None, :], other=0.0
        )
        kp = k0 // 2 + offs_kp
        packed = tl.load(
            w_ptr + offs_n[:, None] * stride_wn + kp[None, :], mask=n_ok[:, None] & (kp < K // 2)[None, :], other=0
        )
        ks = k0 // 16 + offs_ks
        sbyte = tl.load(
            s_ptr + offs_n[:, None] * stride_sn + ks[None, :], mask=n_ok[:, None] & (ks < K // 16)[None, :], other=0
        )
        w = decode_fp4_tile(packed, e4m3_to_f32(sbyte), BLOCK_N, BLOCK_K).to(x.dtype)
        acc = tl.dot(x, tl.trans(w), acc)
    acc = _epilogue(acc, alpha_ptr, bias_ptr, offs_n[None, :], n_ok[None, :], ALPHA_PER_ROW, HAS_BIAS)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])  # fmt: skip


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr, w_ptr, s_ptr, alpha_ptr, bias_ptr, y_ptr,
    N, K,
    stride_xm, stride_wn, stride_sn, stride_ym,
    ALPHA_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HW_CVT: tl.constexpr,
):  # fmt: skip
    """``w_ptr``: the packed weight as int32 words ``[N, K/8]`` (``stride_wn`` in words); word ``w``
    holds elements ``8w .. 8w + 7``, element ``8w + i`` in bits ``4i .. 4i + 3``. ``s_ptr``: the
    e4m3 block scales, as uint8 or (``HW_CVT``, where the type exists) e4m3."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_w = tl.arange(0, BLOCK_K // 8)
    acc = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        word = k0 // 8 + offs_w
        w_ok = word < K // 8
        ok = n_ok[:, None] & w_ok[None, :]
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + word[None, :], mask=ok, other=0).to(tl.uint32, bitcast=True)
        scale_byte = tl.load(s_ptr.to(tl.pointer_type(tl.uint8)) + offs_n[:, None] * stride_sn + (word // 2)[None, :],
                             mask=ok, other=0)  # fmt: skip
        scale = e4m3_to_f32(scale_byte)
        even, odd = e2m1_words_to_e4m3(w)
        e0, e1, e2, e3 = e4m3_words_to_f32(even, HW_CVT)
        o0, o1, o2, o3 = e4m3_words_to_f32(odd, HW_CVT)
        x = x_ptr + row * stride_xm + word * 8
        part = e0 * tl.load(x, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += o0 * tl.load(x + 1, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += e1 * tl.load(x + 2, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += o1 * tl.load(x + 3, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += e2 * tl.load(x + 4, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += o2 * tl.load(x + 5, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += e3 * tl.load(x + 6, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        part += o3 * tl.load(x + 7, mask=w_ok, other=0.0).to(tl.float32)[None, :]
        acc += part * scale
    y = tl.sum(acc, axis=1) * 64.0  # the E4M3 form of a code is its value * 2**-6
    y = _epilogue(y, alpha_ptr, bias_ptr, offs_n, n_ok, ALPHA_PER_ROW, HAS_BIAS)
    tl.store(y_ptr + row * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def w4a16_fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None = None,
    lora_down: torch.Tensor | None = None,
    lora_up: torch.Tensor | None = None,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The op contract's function, computed by the W4A16 Triton kernels (bf16/fp16 activations;
    others go to the reference backend). A LoRA branch is added in ``x.dtype``."""
    return add_low_rank(_w4a16_gemm(x, weight, weight_scale, alpha, bias), x, lora_down, lora_up)


def _w4a16_gemm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if x.dtype not in (torch.bfloat16, torch.float16):
        return reference_fp4_linear(x, weight, weight_scale, alpha, bias)
    n, half_k = weight.shape
    k = half_k * 2
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*x.shape[:-1], n)
    alpha = alpha.to(torch.float32)
    args = (x2, weight, weight_scale.view(torch.uint8), alpha, bias, y)
    strides = (x2.stride(0), weight.stride(0), weight_scale.stride(0), y.stride(0))
    flags = {"ALPHA_PER_ROW": alpha.ndim == 1, "HAS_BIAS": bias is not None}

    if m <= GEMV_MAX_M:
        words = weight.contiguous().view(torch.int32)
        hw_cvt = hardware_e4m3_convert(x.device)
        # sm_89+ takes the e4m3 scales as they are (the kernel reads them through a uint8 pointer):
        # no dtype view op per call in a compiled graph
        gemv_args = (x2, words, weight_scale if hw_cvt else args[2], *args[3:])
        gemv_strides = (x2.stride(0), words.stride(0), *strides[2:])

        def launch(cfg: Config) -> None:
            triton_launcher(_w4a16_gemv_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]), m)](
                *gemv_args, n, k, *gemv_strides, **flags, HW_CVT=hw_cvt, **cfg
            )

        launch(pick_config("w4a16_gemv", (m, n, k, str(x.dtype)), GEMV_CANDIDATES, launch))
    else:

        def launch(cfg: Config) -> None:
            if cfg.get("DENSE"):
                w = decode_nvfp4_dense(weight, weight_scale, alpha, scratch(x.device, x.dtype, (n, k)))
                if bias is None:
                    torch.mm(x2, w.t(), out=y)
                else:
                    torch.addmm(bias.to(x.dtype), x2, w.t(), out=y)
                return
            grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
            triton_launcher(_w4a16_gemm_kernel)[grid](*args, m, n, k, *strides, **flags, GROUP_M=GEMM_GROUP_M, **cfg)

        launch(pick_config("w4a16_gemm", (m_bucket(m), n, k, str(x.dtype)), _gemm_candidates(m), launch))
    return y.reshape(*x.shape[:-1], n)


register_backend("w4a16", w4a16_fp4_linear)
