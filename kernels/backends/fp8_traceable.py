"""The W4A8 / fp8_resident FP8 GEMM as ops ``torch.compile`` sees, for compiled models.

Eagerly, the ``fp4_linear`` op runs the fused Triton activation quantizer, then cuBLAS. Under
``torch.compile`` the same math is written here in torch ops, so Inductor fuses the per-token
FP8 quantization into whatever produced ``x`` (a norm, a modulation, a GELU) instead of
reading ``x`` again: ``q = clamp(x / s, ±448) -> e4m3 (round to nearest even)``,
``s = max(amax|x_row| / 448, 1e-12)`` (bit-identical to :mod:`.fp8_act_quant`), then
``torch._scaled_mm`` with the row scales, the weight's column scales and the bias. The W4A8
weight decode stays one opaque op (``nvfp4_flux::decode_fp8``); it takes ``x`` as an unused
input so the compiler cannot hoist every layer's decode to the start (one FP8 copy at a time).
"""

from __future__ import annotations

import torch

from .fp8_decode import decode_nvfp4_to_fp8
from .w4a8 import W4A8_SMALL_M, fp8_gemm_supports

_DECODE_QUALNAME = "nvfp4_flux::decode_fp8"


def _decode_impl(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, alpha: torch.Tensor, aux: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    w8, col_scale = decode_nvfp4_to_fp8(weight, weight_scale, alpha, row_shift=aux)
    return w8, col_scale


def _decode_fake(x, weight, weight_scale, alpha, aux):
    n, half_k = weight.shape
    return (weight.new_empty((n, 2 * half_k), dtype=torch.float8_e4m3fn),
            weight.new_empty((n,), dtype=torch.float32))  # fmt: skip


def _register() -> None:
    if hasattr(torch.ops.nvfp4_flux, "decode_fp8"):
        return  # already registered by another import of this file
    op = torch.library.custom_op(_DECODE_QUALNAME, mutates_args=())(_decode_impl)
    op.register_fake(_decode_fake)


_register()


def quantize_act_fp8_torch(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token e4m3 quantization in torch ops (same numbers as the Triton kernel)."""
    xf = x2d.float()
    scale = (xf.abs().amax(dim=1) / 448.0).clamp_min(1e-12)
    q = (xf * (1.0 / scale).unsqueeze(1)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, scale


def fp8_linear_traceable(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None,
    backend: str,
) -> torch.Tensor | None:
    """``y`` for the FP8 GEMM path of ``backend`` in compiler-visible ops, or ``None`` where the
    opaque op must run (other backends, small M, shapes cuBLAS FP8 cannot take, fp32 input)."""
    if backend not in ("w4a8", "fp8_resident") or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    n, k = weight.shape[0], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.shape[0] <= W4A8_SMALL_M or not fp8_gemm_supports(n, k):
        return None
    if backend == "w4a8":
        w8, col_scale = torch.ops.nvfp4_flux.decode_fp8(x2, weight, weight_scale, alpha, aux)
    else:
        w8, col_scale = weight, alpha.to(torch.float32)
    q, row_scale = quantize_act_fp8_torch(x2)
    y = torch._scaled_mm(
        q, w8.t(), scale_a=row_scale.unsqueeze(1), scale_b=col_scale.unsqueeze(0),
        bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16, use_fast_accum=True,
    )  # fmt: skip
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
