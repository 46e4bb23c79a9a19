"""NVFP4 weight quantization and dequantization with ModelOpt's exact math.

A weight ``W[N, K]`` becomes:

* ``packed``: uint8 ``[N, K/2]``, two E2M1 codes per byte, even-k element in the
  **low** nibble (ModelOpt order, ``nibble_order="lo"``);
* ``block_scale``: float8_e4m3fn ``[N, K/16]``, one scale per 16 consecutive
  elements along K, linear (row-major) layout;
* ``global_scale``: float32, 0-d (``weight_scale_2`` in files; may also be a
  per-output-channel ``[N]`` vector after fusing layers with different scales).

``W[n, k] ~= e2m1(code[n, k]) * float(block_scale[n, k // 16]) * global_scale``.

The quantizer reproduces ``modelopt.torch.quantization.qtensor.NVFP4QTensor.quantize``
(nvidia-modelopt 0.47.0) bit for bit, including the order of float32 operations:

* ``global_scale = amax(|W|) / (6 * 448)``
* ``s = block_amax / (6 * global_scale)``; zero blocks get ``s = 1``; clamp to
  ``[2**-9, 448]``; cast to e4m3 (round to nearest even)
* ``code = e2m1_round(W / (float(s) * global_scale))``, ties to even, saturating at 6.
"""

from __future__ import annotations

import torch

from .e2m1 import E2M1_MAX, e2m1_encode, e2m1_value_table, pack_nibbles, swap_nibbles, unpack_nibbles

BLOCK_SIZE = 16
E4M3_MAX = 448.0
E4M3_MIN_SCALE = 2.0**-9
_QUANTIZABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def nvfp4_global_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor scale ``amax(|w|) / (6 * 448)`` as a float32 0-d tensor."""
    amax = torch.maximum(w.max().abs(), w.min().abs()).float()
    return amax / (E2M1_MAX * E4M3_MAX)


def nvfp4_block_scales(w: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """E4M3 block scales ``[N, K/16]`` (linear layout) for ``w`` under ``global_scale``."""
    n, k = w.shape
    block_amax = w.reshape(n, k // BLOCK_SIZE, BLOCK_SIZE).abs().amax(dim=-1).float()
    scale = block_amax / (E2M1_MAX * global_scale.to(block_amax.device))
    scale[scale == 0] = 1.0
    return scale.clamp(min=E4M3_MIN_SCALE, max=E4M3_MAX).to(torch.float8_e4m3fn)


def _check_weight(w: torch.Tensor) -> None:
    if w.ndim != 2:
        raise ValueError(f"NVFP4 quantization needs a 2-D weight [N, K], got shape {tuple(w.shape)}")
    if w.shape[1] % BLOCK_SIZE:
        raise ValueError(f"K = {w.shape[1]} is not a multiple of the NVFP4 block size {BLOCK_SIZE}")
    if w.dtype not in _QUANTIZABLE_DTYPES:
        raise TypeError(f"NVFP4 quantization takes float32/bfloat16/float16 weights, got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("weight contains NaN or inf; NVFP4 cannot represent it")


@torch.no_grad()
def nvfp4_quantize(
    w: torch.Tensor, global_scale: torch.Tensor | None = None, row_chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight to NVFP4 exactly as ModelOpt does.

    Args:
        w: ``[N, K]`` float32/bfloat16/float16, K a multiple of 16, all finite.
        global_scale: use this per-tensor scale instead of ``amax(|w|) / 2688`` (ModelOpt's export
            shares one across q/k/v so they can be fused; pass the group's scale to match it).
        row_chunk: rows quantized at a time (bounds the float32 temporaries; same result).

    Returns:
        ``(packed uint8 [N, K/2] low-nibble-first, block_scale e4m3 [N, K/16] linear,
        global_scale float32 0-d)``.

    An all-zero weight (where ModelOpt would divide 0 by 0) gives codes 0, block scales
    1 and ``global_scale = 0``, which dequantizes to zeros.
    """
    _check_weight(w)
    n, k = w.shape
    if global_scale is None:
        global_scale = nvfp4_global_scale(w)
    global_scale = global_scale.to(device=w.device, dtype=torch.float32).reshape(())
    if global_scale == 0:
        packed = torch.zeros((n, k // 2), dtype=torch.uint8, device=w.device)
        ones = torch.ones((n, k // BLOCK_SIZE), dtype=torch.float32, device=w.device)
        return packed, ones.to(torch.float8_e4m3fn), global_scale
    packed = torch.empty((n, k // 2), dtype=torch.uint8, device=w.device)
    block_scale = torch.empty((n, k // BLOCK_SIZE), dtype=torch.float8_e4m3fn, device=w.device)
    for r0 in range(0, n, row_chunk):
        rows = w[r0 : r0 + row_chunk]
        scale = nvfp4_block_scales(rows, global_scale)
        divisor = (scale.to(torch.float32) * global_scale).unsqueeze(-1)
        scaled = (rows.reshape(rows.shape[0], k // BLOCK_SIZE, BLOCK_SIZE) / divisor).view(rows.shape[0], k)
        packed[r0 : r0 + row_chunk] = pack_nibbles(e2m1_encode(scaled), "lo")
        block_scale[r0 : r0 + row_chunk] = scale
    return packed, block_scale, global_scale


def nvfp4_dequantize(
    packed: torch.Tensor,
    block_scale: torch.Tensor,
    global_scale: torch.Tensor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    nibble_order: str = "lo",
) -> torch.Tensor:
    """Decode NVFP4 back to a dense ``[N, K]`` tensor of ``dtype``.

    Args:
        packed: uint8 ``[N, K/2]``.
        block_scale: e4m3 ``[N, K/16]`` in linear layout (unswizzle first if needed).
        global_scale: float32, 0-d or per-output-row ``[N]``.
        dtype: output dtype.
        nibble_order: ``"lo"`` (ModelOpt: even element in the low nibble) or ``"hi"``.

    The float32 arithmetic is ModelOpt's (``NVFP4QTensor.dequantize``):
    ``(e2m1 * (float(block_scale) * global_scale)).to(dtype)``.
    """
    n, half_k = packed.shape
    k = half_k * 2
    if block_scale.shape != (n, k // BLOCK_SIZE):
        raise ValueError(
            f"block_scale shape {tuple(block_scale.shape)} does not match packed weight "
            f"{tuple(packed.shape)} (expected {(n, k // BLOCK_SIZE)})"
        )
    scale = block_scale.to(torch.float32) * _per_row(global_scale, n)
    values = e2m1_value_table(packed.device)[unpack_nibbles(packed, nibble_order).long()]
    out = values.view(n, k // BLOCK_SIZE, BLOCK_SIZE) * scale.unsqueeze(-1)
    return out.view(n, k).to(dtype)


def _per_row(global_scale: torch.Tensor, n: int) -> torch.Tensor:
    """Global scale as something that broadcasts against ``[N, K/16]``."""
    gs = global_scale.to(torch.float32)
    if gs.ndim == 0:
        return gs
    if gs.numel() != n:
        raise ValueError(f"per-channel global scale has {gs.numel()} entries, weight has {n} rows")
    return gs.reshape(n, 1)


__all__ = [
    "BLOCK_SIZE",
    "nvfp4_block_scales",
    "nvfp4_dequantize",
    "nvfp4_global_scale",
    "nvfp4_quantize",
    "swap_nibbles",
]
