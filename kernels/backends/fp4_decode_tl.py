"""Triton helpers that decode NVFP4 tiles in registers (import only where Triton exists).

Bit tricks used (exact, no lookup table):

* E2M1 code ``c`` (bit 3 = sign, bits 0-2 = magnitude index ``m``) to float32: for
  ``m >= 2`` the float32 bits are ``(m + 252) << 22`` (exponent ``(m >> 1) - 1``, mantissa
  bit ``m & 1``); ``m == 1`` is 0.5 and ``m == 0`` is 0; the sign goes to bit 31.
* E4M3 byte (bias 7) to float32: normal numbers have bits
  ``((exp + 120) << 23) | (mantissa << 20)``; subnormals are ``mantissa * 2**-9``.

Packed bytes hold the even-k element in the low nibble (ModelOpt order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..e2m1 import e2m1_decode

_pair_tables: dict[torch.device, torch.Tensor] = {}


def e2m1_pair_table(device: torch.device) -> torch.Tensor:
    """int32 ``[256]``: for a packed byte, the bf16 bits of its low-nibble value in bits 0-15 and
    of its high-nibble value in bits 16-31 (E2M1 values are exact in bf16). Cached per device."""
    table = _pair_tables.get(device)
    if table is None:
        byte = torch.arange(256)
        top16 = lambda v: v.to(torch.float32).view(torch.int32) >> 16  # noqa: E731
        lo = top16(e2m1_decode(byte & 0xF)) & 0xFFFF
        hi = top16(e2m1_decode(byte >> 4))
        table = ((hi << 16) | lo).to(torch.int32).to(device)
        _pair_tables[device] = table
    return table


@triton.jit
def e2m1_pair_to_f32(pair):
    """Entries of :func:`e2m1_pair_table` -> float32 (low-nibble value, high-nibble value)."""
    return (pair << 16).to(tl.float32, bitcast=True), ((pair >> 16) << 16).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_to_f32(code):
    """int32 codes 0..15 -> float32 values."""
    mag = code & 7
    bits = tl.where(mag >= 2, (mag + 252) << 22, tl.where(mag == 1, 0x3F000000, 0))
    bits = bits | ((code & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e4m3_to_f32(byte):
    """uint8 E4M3FN bit patterns -> float32 (NaN patterns are rejected at load, not here)."""
    b = byte.to(tl.int32)
    exp = (b >> 3) & 0xF
    man = b & 7
    normal = (((exp + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    value = tl.where(exp == 0, man.to(tl.float32) * 0.001953125, normal)
    return tl.where((b & 0x80) != 0, -value, value)


@triton.jit
def decode_fp4_tile(packed, scale_f32, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Packed uint8 ``[BLOCK_N, BLOCK_K/2]`` and float32 block scales ``[BLOCK_N, BLOCK_K/16]``
    -> float32 ``[BLOCK_N, BLOCK_K]`` (codes times their block scale)."""
    p = packed.to(tl.int32)
    lo = tl.reshape(e2m1_to_f32(p & 0xF), [BLOCK_N, BLOCK_K // 16, 8]) * scale_f32[:, :, None]
    hi = tl.reshape(e2m1_to_f32(p >> 4), [BLOCK_N, BLOCK_K // 16, 8]) * scale_f32[:, :, None]
    return tl.reshape(tl.join(lo, hi), [BLOCK_N, BLOCK_K])
