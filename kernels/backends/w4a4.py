"""W4A4 backend (Blackwell's native NVFP4 GEMM), with the math pinned by an emulation.

Per call, for ``x[M, K]`` and packed NVFP4 weights ``[N, K/2]`` (even-k element in the low
nibble: the order ``torch.float4_e2m1fn_x2`` uses, as PyTorch's own NVFP4 GEMM tests pack it):

1. :func:`.nvfp4_act_quant.quantize_act_nvfp4` quantizes ``x`` to NVFP4 under the checkpoint's
   static ``input_scale`` when the layer has one (ModelOpt's calibrated ``amax / (6 * 448)``, as
   TensorRT-LLM and vLLM use it; values beyond the calibrated range saturate), otherwise under a
   dynamic ``g_x = amax(|x|) / (6 * 448)``; block scales written in cuBLAS's swizzled layout;
2. ``torch._scaled_mm`` with ``float4_e2m1fn_x2`` operands and both swizzled e4m3 scale tensors
   (the weight's swizzled once at load: the backend's ``aux``) computes the block-scaled product;
3. ``* (g_x * alpha[n]) + bias``, bf16 out.

That is ``y[m, n] = alpha[n] * g_x * sum_k e2m1(xq) * s_x * e2m1(wq) * s_w``: the product of the
two dequantized operands. :func:`w4a4_emulated_linear` computes exactly that in float32 on any
device. The native call needs sm_100/103/120/121 and a PyTorch whose cuBLAS has NVFP4 (CUDA >= 12.8
builds; ComfyUI recommends cu130): :func:`native_w4a4_check` runs it once per device on a small
random problem and compares it with the emulation before the dispatcher picks this backend, so a
layout or version mismatch falls back to ``w4a8`` with a logged reason instead of wrong images.
Where the native call is not available (and in the tests on the H100 and CPU) the backend computes
the emulation: correct, slow. No Blackwell GPU was available here: the native call has not run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nvfp4 import BLOCK_SIZE, nvfp4_dequantize, nvfp4_quantize
from ..scale_layout import swizzle_scales, unswizzle_scales
from ..tracing import outside_trace
from . import add_low_rank, register_backend
from .nvfp4_act_quant import quantize_act_nvfp4

NATIVE_CAPABILITIES = ((10, 0), (10, 3), (12, 0), (12, 1))


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


def native_fp4_available(device: torch.device) -> tuple[bool, str]:
    """Whether this device and PyTorch build offer the native FP4 GEMM at all, and if not, why."""
    if device.type != "cuda":
        return False, f"native NVFP4 GEMMs need a CUDA GPU, the model is on {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap not in NATIVE_CAPABILITIES:
        return False, f"sm_{cap[0]}{cap[1]} has no native NVFP4 GEMM (sm_100/103/120/121 do)"
    if not hasattr(torch, "float4_e2m1fn_x2"):
        return False, f"torch {torch.__version__} has no float4_e2m1fn_x2"
    cuda = tuple(int(v) for v in (torch.version.cuda or "0.0").split(".")[:2])
    if cuda < (12, 8):
        return False, f"torch {torch.__version__} is built with CUDA {torch.version.cuda}; NVFP4 GEMMs need >= 12.8"
    return True, ""


def _native_gemm(x2: torch.Tensor, weight: torch.Tensor, w_scales: torch.Tensor, alpha: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype,
                 input_scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    xq, xs, g = quantize_act_nvfp4(x2, input_scale)
    y = torch._scaled_mm(
        xq.view(torch.float4_e2m1fn_x2),
        weight.view(torch.float4_e2m1fn_x2).t(),
        scale_a=xs.reshape(-1),
        scale_b=w_scales.reshape(-1),
        out_dtype=torch.bfloat16,
    )
    y = y.float() * (g * alpha.to(torch.float32))
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


_native_ok: dict[torch.device, tuple[bool, str]] = {}


def native_w4a4_check(device: torch.device | str) -> tuple[bool, str]:
    """Run the native GEMM once on ``device`` against the emulation (cached): ``(works, why not)``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _native_ok:
        with outside_trace():  # (a first use inside a compile trace checks on real tensors)
            _native_ok[device] = _compare_native_with_emulation(device)
    return _native_ok[device]


def _compare_native_with_emulation(device: torch.device) -> tuple[bool, str]:
    ok, why = native_fp4_available(device)
    if ok:
        gen = torch.Generator(device="cpu").manual_seed(0)
        wq, ws, wg = (t.to(device) for t in nvfp4_quantize(torch.randn(256, 512, generator=gen) * 0.05))
        x = (torch.randn(128, 512, generator=gen)).to(device, torch.bfloat16)
        try:
            y = _native_gemm(x, wq, swizzle_scales(ws), wg, None, torch.bfloat16)
            ref = w4a4_emulated_linear(x, wq, ws, wg)
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            ok, why = err < 1e-2, f"native NVFP4 GEMM disagrees with its emulation (relative error {err:.3g})"
        except RuntimeError as exc:  # cuBLAS without NVFP4, unsupported layout, ...
            ok, why = False, f"native NVFP4 GEMM failed: {str(exc).splitlines()[0]}"
    return ok, "" if ok else why


def w4a4_fp4_linear(
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
    """The op contract's function: the native FP4 GEMM where :func:`native_w4a4_check` passed,
    the float32 emulation elsewhere; ``aux`` is the weight's swizzled scales (prepared at load),
    ``input_scale`` the static activation scale (``None``: dynamic).
    A LoRA branch is added in ``x.dtype``."""
    n, half_k = weight.shape
    k = half_k * 2
    x2 = x.reshape(-1, k)
    if x.is_cuda and native_w4a4_check(x.device)[0] and x2.shape[0] and k % 32 == 0 and n % 16 == 0:
        w_scales = swizzle_scales(weight_scale) if aux is None else aux
        y = _native_gemm(x2, weight, w_scales, alpha, bias, x.dtype, input_scale).reshape(*x.shape[:-1], n)
    else:
        y = w4a4_emulated_linear(x, weight, weight_scale, alpha, bias, input_scale)
    return add_low_rank(y, x, lora_down, lora_up)


register_backend("w4a4", w4a4_fp4_linear, prepare=swizzle_scales)
