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
* Code (<= 2 significant bits) x E4M3 block scale (<= 4) x the FP8 decode's row shift (a power
  of two that puts the row's largest product in (224, 448], so >= 2**-3) is 0 or lies in
  [2**-13, 448] with <= 6 significant bits: fp16 (11 bits, normal from 2**-14) holds it exactly.
  So sm_89+ can scale two codes with one ``mul.f16x2`` and round the pair to e4m3 with one
  ``cvt.rn.satfinite.e4m3x2.f16x2``: the same bytes as the float32 path.

Packed bytes hold the even-k element in the low nibble (ModelOpt order).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..autotune import interpreting


def hardware_e4m3_convert(device: torch.device) -> bool:
    """Whether kernels may convert E4M3 in hardware (sm_89+; not in Triton's CPU interpreter)."""
    return device.type == "cuda" and not interpreting() and _sm89_or_newer(device)


@functools.cache  # asked on every call: look the device up once
def _sm89_or_newer(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 9)


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


@triton.jit
def scale_e2m1_words_to_e4m3(even, odd, scale_byte, mult):
    """sm_89+ only. The E4M3 forms of 8 codes (:func:`e2m1_words_to_e4m3`'s ``even``/``odd``),
    their block's E4M3 scale byte (int32, low 8 bits) and a float32 multiplier ``mult`` (a power
    of two, with ``code * scale * mult`` inside e4m3 by the caller's construction) -> one int64 of
    8 e4m3 bytes, byte ``j`` = element ``j``, each ``e4m3(code * scale * mult)`` rounded to nearest
    even. The scale is formed as ``scale * mult * 2**6`` in float32, narrowed to fp16 (exact, see
    module doc) and applied to code pairs with ``mul.rn.f16x2``; ``prmt`` interleaves the even
    and odd bytes."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b16 sb, e01, e23, o01, o23, q0, q1, q2, q3;
        .reg .b32 s2, fe0, fe1, fo0, fo1, ew, ow, lo, hi;
        .reg .f16 sh, sz;
        .reg .f32 sf;
        cvt.u16.u32 sb, $3;
        cvt.rn.f16x2.e4m3x2 s2, sb;
        mov.b32 {sh, sz}, s2;
        cvt.f32.f16 sf, sh;
        mul.f32 sf, sf, $4;
        cvt.rn.f16.f32 sh, sf;
        mov.b32 s2, {sh, sh};
        mov.b32 {e01, e23}, $1;
        mov.b32 {o01, o23}, $2;
        cvt.rn.f16x2.e4m3x2 fe0, e01;
        cvt.rn.f16x2.e4m3x2 fe1, e23;
        cvt.rn.f16x2.e4m3x2 fo0, o01;
        cvt.rn.f16x2.e4m3x2 fo1, o23;
        mul.rn.f16x2 fe0, fe0, s2;
        mul.rn.f16x2 fe1, fe1, s2;
        mul.rn.f16x2 fo0, fo0, s2;
        mul.rn.f16x2 fo1, fo1, s2;
        cvt.rn.satfinite.e4m3x2.f16x2 q0, fe0;
        cvt.rn.satfinite.e4m3x2.f16x2 q1, fe1;
        cvt.rn.satfinite.e4m3x2.f16x2 q2, fo0;
        cvt.rn.satfinite.e4m3x2.f16x2 q3, fo1;
        mov.b32 ew, {q0, q1};
        mov.b32 ow, {q2, q3};
        prmt.b32 lo, ew, ow, 0x5140;
        prmt.b32 hi, ew, ow, 0x7362;
        mov.b64 $0, {lo, hi};
        }""",
        constraints="=l,r,r,r,f",
        args=[even, odd, scale_byte, mult * 64.0],
        dtype=tl.int64,
        is_pure=True,
        pack=1,
    )
