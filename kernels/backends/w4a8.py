"""W4A8 backend (Hopper sm_90, Ada sm_89): NVFP4 weights stay 4-bit in VRAM, FP8 tensor cores compute.

Per call, for ``x[M, K]`` and a packed NVFP4 weight ``[N, K/2]``:

1. decode the layer's weight once to e4m3 ``[N, K]`` in a per-device scratch buffer
   (:mod:`.weight_decode`: a memory-bound Triton pass; the buffer is reused by every layer,
   so only one layer's FP8 copy exists at a time);
2. quantize ``x`` to e4m3 with a dynamic per-token scale (:mod:`.fp8_act_quant`);
3. ``torch._scaled_mm`` (cuBLAS FP8, QGMMA on sm_90) with the row scales of ``x``, the
   column scales ``alpha[n] * 2**e[n]`` and the bias in its epilogue; bf16 out.

Small M (modulation rows) is bound by weight bytes, not arithmetic: there the W4A16 GEMV, which
reads the 4-bit weights directly, is used; W4A16 also takes shapes cuBLAS FP8 cannot (N or K not
a multiple of 16). From 256 to 1024 rows on sm_90 (FLUX's 512 text tokens), bf16 activations and no
LoRA, :mod:`.w4a8_swapab` decodes the weights inside its FP8 GEMM instead: steps 1 and 3 cost more
than bf16 there (decode ~15 us + cuBLAS FP8 ~33 us vs cuBLAS bf16 ~44 us for 512 x 9216 x 3072).

The ``fp8_resident`` backend is step 2-3 only, for weights decoded once at load
(:func:`make_fp8_resident`): more VRAM (1 byte per weight), less work per call; its small-M rows
go to a GEMV over the resident FP8 weights (:mod:`.fp8_gemv`; bf16/fp16 activations, one launch).

LoRA (:func:`fp8_lora_form`): the branch ``(x @ A^T) @ B^T`` rides in the same FP8 GEMM as ``R``
extra K columns: ``[q(x), q(x @ A'^T)] @ [W8, B8]^T`` with the activation row scale shared by both
parts and the weight column scale ``col_scale[n]`` shared by ``W8[n]`` and ``B8[n]``. So a LoRA
costs ``x @ A'^T`` (one read of ``x``) and ``R / K`` more GEMM work instead of a second pass over
the output. ``B8 = e4m3(B / (g * col_scale))`` and ``A' = g * A``, with ``g`` chosen per layer so
``|B8| <= 224``; the activation scale covers ``x @ A'^T`` too, so nothing saturates. Both LoRA
factors are rounded to e4m3 (4 significant bits, as the activations already are): the branch's
own relative error is a few percent of the branch, not of the output. ``R`` is padded with zeros
so that ``K + R`` is a multiple of 128: cuBLAS FP8 needs a multiple of 16 and runs a ragged K
much slower (H100, M=4608, K=3072, N=21504: 391 us without LoRA, 480 with K + 32, 425 with
K + 128; bench/NOTES.md), and ranks up to 128 share one shape (no recompile when swapping).
The weight part is written into the per-device scratch next to ``B8``: W4A8 decodes into it
(the decode launch copies ``B8`` too), ``fp8_resident`` copies its resident weight into it (one
extra read of the FP8 weight per call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import add_low_rank, plain_lora, register_backend
from .fp8_act_quant import quantize_act_fp8
from .fp8_gemv import fp8_gemv
from .scratch import scratch
from .w4a8_swapab import swapab_supports, w4a8_swapab_linear
from .w4a16 import w4a16_fp4_linear
from .weight_decode import decode_nvfp4_to_fp8, fp8_row_shift

# At or below this many rows a GEMV beats activation quantization + FP8 GEMM: W4A8 takes the W4A16
# GEMV (which decodes once per row: 1.21x bf16 at M = 1, 0.35x at M = 4 where the FP8 path gives
# 0.62x, bench/h100_gemm_v6.json), fp8_resident the FP8-weight GEMV (:mod:`.fp8_gemv`).
W4A8_SMALL_M = 1


# cuBLAS (H100, torch 2.11 / CUDA 13) has no FP8 row-wise kernel with a bias epilogue and fast
# accumulation for a few rows at large K: M = 2..33 at K = 12288 or 15360, N = 3072 fail with
# CUBLAS_STATUS_NOT_SUPPORTED (bench/NOTES.md, session 8). Below this many rows the bias is added
# after the GEMM (one small elementwise op).
CUBLAS_BIAS_MIN_M = 64


def fp8_gemm_supports(n: int, k: int) -> bool:
    """cuBLAS FP8 needs N and K multiples of 16."""
    return n % 16 == 0 and k % 16 == 0


def fp8_scaled_mm(
    x2d: torch.Tensor,
    w8: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    lora_down: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(q(x) @ w8^T) * row_scale * col_scale + bias`` with per-token FP8 activations; with
    ``lora_down`` [R, K], ``w8`` is ``[N, K + R]`` and ``x @ lora_down^T`` is appended to ``x``."""
    q, row_scale = quantize_act_fp8(x2d, None if lora_down is None else F.linear(x2d, lora_down))
    bias = None if bias is None else bias.to(torch.bfloat16)
    bias_in_epilogue = x2d.shape[0] >= CUBLAS_BIAS_MIN_M
    # cuBLAS row-wise scaling on sm_90 produces bf16 only; fp16 callers get a cast.
    y = torch._scaled_mm(
        q,
        w8.t(),
        scale_a=row_scale.unsqueeze(1),
        scale_b=col_scale.unsqueeze(0),
        bias=bias if bias_in_epilogue else None,
        out_dtype=torch.bfloat16,
        use_fast_accum=True,
    )
    if bias is not None and not bias_in_epilogue:
        y = y + bias
    return y if out_dtype == torch.bfloat16 else y.to(out_dtype)


def _weight_with_lora_columns(device: torch.device, n: int, k: int, lora_down: torch.Tensor | None) -> torch.Tensor:
    """The scratch as an e4m3 ``[N, K + R]`` matrix (``R = 0`` without LoRA)."""
    kk = k + (0 if lora_down is None else lora_down.shape[0])
    return scratch(device, torch.float8_e4m3fn, (n, kk))


def w4a8_fp4_linear(
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
    """The op contract's function: decode once per call, FP8 GEMM (W4A16 for small M, the fused
    swap-AB GEMM for 256..1024 rows on sm_90).
    ``aux`` is the weight's :func:`fp8_row_shift` (prepared at load), or ``None``; the LoRA
    factors are in :func:`fp8_lora_form`."""
    if lora_down is not None and lora_up.dtype != torch.float8_e4m3fn:  # fp8_lora_form's plain fallback
        return add_low_rank(w4a8_fp4_linear(x, weight, weight_scale, alpha, bias, aux), x, lora_down, lora_up)
    n, half_k = weight.shape
    k = half_k * 2
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if m > W4A8_SMALL_M and lora_down is None and swapab_supports(x2, weight, weight_scale):
        row_shift = fp8_row_shift(weight_scale) if aux is None else aux
        return w4a8_swapab_linear(x2, weight, weight_scale, row_shift, alpha, bias).reshape(*x.shape[:-1], n)
    if m <= W4A8_SMALL_M or not fp8_gemm_supports(n, k):
        y = w4a16_fp4_linear(x, weight, weight_scale, alpha, bias)
        if lora_down is None:
            return y
        up = _dense_lora_up(lora_up, fp8_column_scale(weight, weight_scale, alpha, aux), x.dtype)
        return add_low_rank(y, x, lora_down, up)
    w8 = _weight_with_lora_columns(x.device, n, k, lora_down)
    _, col_scale = decode_nvfp4_to_fp8(weight, weight_scale, alpha, out=w8, row_shift=aux, extra_columns=lora_up)
    return fp8_scaled_mm(x2, w8, col_scale, bias, x.dtype, lora_down).reshape(*x.shape[:-1], n)


def fp8_resident_fp4_linear(
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
    """Op contract variant: ``weight`` is e4m3 ``[N, K]``, ``alpha`` the column scales ``[N]``;
    ``weight_scale`` is unused (empty)."""
    if lora_down is not None and lora_up.dtype != torch.float8_e4m3fn:  # fp8_lora_form's plain fallback
        return add_low_rank(fp8_resident_fp4_linear(x, weight, weight_scale, alpha, bias), x, lora_down, lora_up)
    n, k = weight.shape
    if not fp8_gemm_supports(n, k):  # cuBLAS FP8 cannot take this shape: widen the weights instead
        y = F.linear(x, (weight.to(torch.float32) * alpha.unsqueeze(1)).to(x.dtype), bias)
        return y if lora_down is None else add_low_rank(y, x, lora_down, _dense_lora_up(lora_up, alpha, x.dtype))
    x2 = x.reshape(-1, k)
    if x2.shape[0] <= W4A8_SMALL_M and x.dtype in (torch.bfloat16, torch.float16):
        y = fp8_gemv(x2, weight, alpha, bias)
        if lora_down is not None:
            y = add_low_rank(y, x2, lora_down, _dense_lora_up(lora_up, alpha, x.dtype))
        return y.reshape(*x.shape[:-1], n)
    w8 = weight
    if lora_down is not None:
        w8 = _weight_with_lora_columns(x.device, n, k, lora_down)
        torch.cat((weight, lora_up), dim=1, out=w8)
    return fp8_scaled_mm(x2, w8, alpha, bias, x.dtype, lora_down).reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------- LoRA in the FP8 GEMM

LORA_UP_TARGET = 224.0  # the largest |B8| code: half of e4m3's range
GEMM_K_ALIGN = 128  # K + R is padded to a multiple of this (see module doc)


def padded_rank(r: int, k: int) -> int:
    """The smallest ``R' >= r`` with ``K + R'`` a multiple of :data:`GEMM_K_ALIGN`."""
    return -(-(k + r) // GEMM_K_ALIGN) * GEMM_K_ALIGN - k


def fp8_column_scale(
    weight: torch.Tensor, weight_scale: torch.Tensor, alpha: torch.Tensor, aux: torch.Tensor | None
) -> torch.Tensor:
    """The FP8 GEMM's float32 column scale ``[N]`` of this layer (see :mod:`.weight_decode`):
    ``alpha`` itself for fp8-resident weights, ``alpha / row_shift`` for packed NVFP4."""
    n = weight.shape[0]
    alpha = alpha.to(torch.float32)
    if weight.dtype != torch.uint8:
        return alpha.expand(n)
    row_shift = fp8_row_shift(weight_scale) if aux is None else aux
    return alpha.expand(n) / row_shift


def fp8_lora_form(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    aux: torch.Tensor | None,
    down: torch.Tensor,
    up: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A' [R', K] in dtype, B8 [N, R'] e4m3)`` for the FP8 backends (see module doc), from the
    float32 factors ``down`` [R, K] and ``up`` [N, R] (strength folded in); ``R'`` = padded rank.
    A layer with a zero column scale (an all-zero weight) cannot carry B in its GEMM: it gets the
    plain form (both factors in ``dtype``, added after the GEMM)."""
    col_scale = fp8_column_scale(weight, weight_scale, alpha, aux)
    if not bool(torch.isfinite(col_scale).all() and (col_scale > 0).all()):
        return plain_lora(weight, weight_scale, alpha, aux, down, up, dtype)
    r, k = down.shape
    rp = padded_rank(r, k)
    rel = up.to(torch.float32) / col_scale.unsqueeze(1)
    bmax = rel.abs().amax()
    g = bmax / LORA_UP_TARGET  # 0 for an all-zero B (strength 0): then A' = 0 too, x's scale is unchanged
    down_p = down.new_zeros((rp, k), dtype=torch.float32)
    down_p[:r] = down.to(torch.float32) * g
    up8 = torch.zeros((up.shape[0], rp), dtype=torch.float8_e4m3fn, device=up.device)
    up8[:, :r] = torch.where(g > 0, rel / g.clamp_min(torch.finfo(torch.float32).tiny), 0.0).to(torch.float8_e4m3fn)
    return down_p.to(dtype), up8


def _dense_lora_up(up8: torch.Tensor, col_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``B8`` back in ``dtype`` (for the paths that add the branch outside an FP8 GEMM)."""
    return (up8.to(torch.float32) * col_scale.unsqueeze(1)).to(dtype)


def make_fp8_resident(
    weight: torch.Tensor, weight_scale: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode once (at load) for the ``fp8_resident`` backend: (e4m3 ``[N, K]``, column scales ``[N]``).

    CPU tensors (a loader's state dict) are decoded on the current CUDA device when there is one
    and come back to the CPU: the Triton decode gives the torch path's bytes (tests/test_backends.py)
    in milliseconds, where the CPU took ~50 s for FLUX.1-dev (H100 host, E2E v11/v12 load times)."""
    if weight.device.type == "cpu" and torch.cuda.is_available():
        dev = torch.device("cuda")
        w8, col_scale = decode_nvfp4_to_fp8(weight.to(dev), weight_scale.to(dev), alpha.to(dev))
        return w8.cpu(), col_scale.cpu()
    return decode_nvfp4_to_fp8(weight, weight_scale, alpha)


register_backend("w4a8", w4a8_fp4_linear, prepare=fp8_row_shift, prepare_lora=fp8_lora_form)
register_backend("fp8_resident", fp8_resident_fp4_linear, prepare_lora=fp8_lora_form)
