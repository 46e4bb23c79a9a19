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

import triton
import triton.language as tl


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
