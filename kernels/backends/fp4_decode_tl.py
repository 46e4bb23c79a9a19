"""Triton helpers that decode NVFP4 tiles in registers (import only where Triton exists).

Bit tricks used (exact, no lookup table):

* E2M1 code ``c`` (bit 3 = sign, bits 0-2 = magnitude index ``m``) to float32: for
  ``m >= 2`` the float32 bits are ``(m + 252) << 22`` (exponent ``(m >> 1) - 1``, mantissa
  bit ``m & 1``); ``m == 1`` is 0.5 and ``m == 0`` is 0; the sign goes to bit 31.
* E4M3 byte (bias 7) to float32: normal numbers have bits
  ``((exp + 120) << 23) | (mantissa << 20)``; subnormals are ``mantissa * 2**-9``.
* E2M1 code to E4M3 byte: sign to bit 7, magnitude bits to bits 2-4. The E4M3 number is then
  exactly ``value * 2**-6`` (``m == 1``, 0.5, becomes E4M3's subnormal ``0.5 * 2**-6``), and
  sm_89+ converts two such bytes to two fp16 in one instruction (``cvt.rn.f16x2.e4m3x2``).

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


@triton.jit
def e2m1_words_to_e4m3(w):
    """uint32 words of 8 packed E2M1 codes -> (even, odd): uint32 words of 4 E4M3 bytes each,
    byte ``j`` of ``even`` the code of element ``2j`` (low nibble of byte ``j``), of ``odd`` the
    code of element ``2j + 1``; each byte is ``code value * 2**-6`` (see module doc)."""
    even = ((w & 0x08080808) << 4) | ((w & 0x07070707) << 2)
    odd = (w & 0x80808080) | ((w >> 2) & 0x1C1C1C1C)
    return even, odd


@triton.jit
def e4m3_words_to_f32(word, HW_CVT: tl.constexpr):
    """uint32 words of 4 E4M3 bytes -> 4 float32 tensors (byte 0 first). ``HW_CVT``: two
    ``cvt.rn.f16x2.e4m3x2`` per word (sm_89+); otherwise the bit arithmetic of :func:`e4m3_to_f32`."""
    if HW_CVT:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b16 a, b;
            .reg .b32 h0, h1;
            .reg .f16 f0, f1, f2, f3;
            mov.b32 {a, b}, $4;
            cvt.rn.f16x2.e4m3x2 h0, a;
            cvt.rn.f16x2.e4m3x2 h1, b;
            mov.b32 {f0, f1}, h0;
            mov.b32 {f2, f3}, h1;
            cvt.f32.f16 $0, f0;
            cvt.f32.f16 $1, f1;
            cvt.f32.f16 $2, f2;
            cvt.f32.f16 $3, f3;
            }""",
            constraints="=f,=f,=f,=f,r",
            args=[word],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32),
            is_pure=True,
            pack=1,
        )
    else:
        return (
            e4m3_to_f32(word & 0xFF),
            e4m3_to_f32((word >> 8) & 0xFF),
            e4m3_to_f32((word >> 16) & 0xFF),
            e4m3_to_f32(word >> 24),
        )
