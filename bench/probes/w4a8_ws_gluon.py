"""Experiment (sessions 12-13), not used by the pack: a warp-specialized W4A8 GEMM in Gluon for Hopper.

``y[M, N] = (q(x)[M, K] @ dec(W)[N, K]^T) * xs[m] * col_scale[n] + bias[n]``, bf16 out, where ``dec(W)`` is
the e4m3 decode of the packed NVFP4 weight (``kernels.backends.weight_decode``: code x block scale x
row shift, rounded once; the same bytes). One CTA per (BM tokens, BN weight rows) tile; partitions:

* default (``num_warps``): async wgmma of the x tile (TMA, smem) with the decoded weight tile (smem,
  read through an e4m3 view of the int32 ring), fp32 accumulator; epilogue scales, bias, store;
* worker 0 (1 warp): TMA loads of x tiles ``[BM, BK]`` into a ``STAGES`` ring;
* worker 1 (1 warp): TMA loads of code tiles ``[BN, BK/2]`` bytes (element 2i in the low nibble of
  byte i) into a ``CSTAGES`` ring, and on even k-steps the block scales of two steps (``[BN, 16]``
  bytes: a TMA box must start 16-byte aligned, so one box per step of 8 scales faults);
* worker 2 (``DEC_WARPS``): reads one k-step of codes and scales from smem, decodes them to int32
  words of 4 e4m3 bytes (byte j = element 4w + j) and stores them to the ``STAGES`` ring.

``LUT``: 0 = per-word arithmetic decode, 1 = per-block table (8 magnitudes x scale rounded once, one
``prmt`` per word), 2 = no decode and no store (timing control), 3 = store the codes undecoded
(control); adding 10 skips the MMAs (diagnostic: the data pipeline alone).

Measured on the H100 (bench/NOTES.md, sessions 12 and 13): correct (error equal to the decode +
cuBLAS path), 0.64-0.75x bf16 at M = 512. Without MMAs and decode the pipeline alone takes about
as long as cuBLAS FP8 (qkv 33 us); it slows as the code ring gets shallower, so it is bound by the
bytes in flight per SM, and the decode adds 17-33 us on top. Run with
``bench/probes/bench_w4a8_ws_gluon.py``.
"""

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Shared PTX pieces of the per-word decodes. _NIBBLES_TO_E4M3_FORM: t = bytes (c0, c0, c1, c1) of a
# 16-bit word of 4 codes (element i in nibble i) -> e = 4 bytes, byte i the E4M3 form of code i
# (sign to bit 7, magnitude bits to bits 2-4: the code's value x 2**-6); uses u.
# _E4M3_FORM_TIMES_SCALE: e x sh (f16 scale, 2**6 included) -> $0 = 4 e4m3 bytes, rounded once.
_NIBBLES_TO_E4M3_FORM = """
        shr.u32 u, t, 4;
        lop3.b32 t, t, u, 0x0F000F00, 0xD8;
        and.b32 u, t, 0x07070707;
        and.b32 t, t, 0x08080808;
        shl.b32 u, u, 2;
        shl.b32 t, t, 4;
        or.b32 e, t, u;"""
_E4M3_FORM_TIMES_SCALE = """
        mov.b32 s2, {sh, sh};
        mov.b32 {h0, h1}, e;
        cvt.rn.f16x2.e4m3x2 f0, h0;
        cvt.rn.f16x2.e4m3x2 f1, h1;
        mul.rn.f16x2 f0, f0, s2;
        mul.rn.f16x2 f1, f1, s2;
        cvt.rn.satfinite.e4m3x2.f16x2 q0, f0;
        cvt.rn.satfinite.e4m3x2.f16x2 q1, f1;
        mov.b32 $0, {q0, q1};"""
_QUAD_ASM = gl.constexpr(
    """{
        .reg .b32 t, u, e, f0, f1, s2;
        .reg .b16 h0, h1, q0, q1, sh;
        prmt.b32 t, $1, 0, 0x1100;"""
    + _NIBBLES_TO_E4M3_FORM
    + """
        cvt.rn.f16.f32 sh, $2;"""
    + _E4M3_FORM_TIMES_SCALE
    + "\n        }"
)


@gluon.jit
def _quad_e4m3(code16, scale):
    """4 codes (low 16 bits of $1) x ``scale`` ($2: block scale x row shift x 2**6, since a code's
    E4M3 form is its value x 2**-6) -> one word of 4 e4m3 bytes."""
    return gl.inline_asm_elementwise(
        asm=_QUAD_ASM,
        constraints="=r,r,f",
        args=[code16, scale],
        dtype=gl.int32,
        is_pure=True,
        pack=1,
    )


# One word of _block_e4m3: magnitudes picked from the block's table (lo, hi) by one prmt, signs
# (bit 3 of nibble j) moved to bit 7 of byte j and ORed in; input register {i}, output {o}.
_BLOCK_WORD_ASM = """
        and.b32 sel, ${i}, 0x7777;
        prmt.b32 g, lo, hi, sel;
        prmt.b32 t, ${i}, 0, 0x1100;
        shl.b32 u, t, 4;
        lop3.b32 t, u, t, 0x00800080, 0xE4;
        lop3.b32 ${o}, g, t, 0x80808080, 0xF8;"""
_BLOCK_ASM = gl.constexpr(
    """{
        .reg .b32 s2, m01, m23, m45, m67, lo, hi, t, u, g, sel;
        .reg .b16 sh, q0, q1, q2, q3;
        cvt.rn.f16.f32 sh, $8;
        mov.b32 s2, {sh, sh};
        mov.b32 m01, 0x38000000;
        mov.b32 m23, 0x3E003C00;
        mov.b32 m45, 0x42004000;
        mov.b32 m67, 0x46004400;
        mul.rn.f16x2 m01, m01, s2;
        mul.rn.f16x2 m23, m23, s2;
        mul.rn.f16x2 m45, m45, s2;
        mul.rn.f16x2 m67, m67, s2;
        cvt.rn.satfinite.e4m3x2.f16x2 q0, m01;
        cvt.rn.satfinite.e4m3x2.f16x2 q1, m23;
        cvt.rn.satfinite.e4m3x2.f16x2 q2, m45;
        cvt.rn.satfinite.e4m3x2.f16x2 q3, m67;
        mov.b32 lo, {q0, q1};
        mov.b32 hi, {q2, q3};"""
    + "".join(_BLOCK_WORD_ASM.format(i=4 + j, o=j) for j in range(4))
    + "\n        }"
)


@gluon.jit
def _block_e4m3(code16, scale):
    """pack=4: four consecutive words of one 16-element block. $4..$7: codes (low 16 bits: 4 codes,
    element j in nibble j), $8: the block's scale x row shift (float32; $9..$11 the same) -> $0..$3:
    words of 4 e4m3 bytes. The 8 magnitudes x scale are rounded once per block (fp16 product, exact;
    one cvt), then each word picks its bytes with one prmt and ORs in the signs."""
    return gl.inline_asm_elementwise(
        asm=_BLOCK_ASM,
        constraints="=r,=r,=r,=r,r,r,r,r,f,f,f,f",
        args=[code16, scale],
        dtype=gl.int32,
        is_pure=True,
        pack=4,
    )


@gluon.jit
def _x_load_partition(x_desc, x_bufs, x_ready, x_empty, off_m, num_k, BK: gl.constexpr, STAGES: gl.constexpr):
    for ki in range(num_k):
        s = ki % STAGES
        ph = (ki // STAGES) & 1
        mbarrier.wait(x_empty.index(s), ph ^ 1)
        mbarrier.expect(x_ready.index(s), x_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(x_desc, [off_m, ki * BK], x_ready.index(s), x_bufs.index(s))


@gluon.jit
def _code_load_partition(
    c_desc, sc_desc, c_bufs, sc_bufs, c_ready, c_empty, off_n, num_k, BK: gl.constexpr, CSTAGES: gl.constexpr
):
    # codes [BN, BK/2] bytes of k-step ki, CSTAGES steps ahead of the decode; on even steps also the
    # scales of steps ki and ki + 1 ([BN, 16] bytes: a TMA box starts 16-byte aligned, BK = 128)
    for ki in range(num_k):
        s = ki % CSTAGES
        ph = (ki // CSTAGES) & 1
        mbarrier.wait(c_empty.index(s), ph ^ 1)
        if ki % 2 == 0:
            mbarrier.expect(c_ready.index(s), c_desc.block_type.nbytes + sc_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(sc_desc, [off_n, ki * (BK // 16)], c_ready.index(s), sc_bufs.index(s))
        else:
            mbarrier.expect(c_ready.index(s), c_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(c_desc, [off_n, ki * (BK // 2)], c_ready.index(s), c_bufs.index(s))


@gluon.jit
def _decode_partition(
    shift_ptr, c_bufs, sc_bufs, c_ready, c_empty, w_bufs, w_ready, w_empty, N, off_n, num_k,
    BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr, CSTAGES: gl.constexpr, DEC_WARPS: gl.constexpr,
    LUT: gl.constexpr,
):  # fmt: skip
    # codes as [BN, BK/16 blocks, 4 words]: one thread holds one block's 4 uint16 words (word j of a
    # block = codes 4j..4j+3, element i in nibble i); its scale broadcasts over the last dim
    lay3: gl.constexpr = gl.BlockedLayout([1, 1, 4], [32 // (BK // 16), BK // 16, 1], [DEC_WARPS, 1, 1], [2, 1, 0])
    lay_s: gl.constexpr = gl.SliceLayout(2, lay3)
    # output words [BN, BK/4]: word w of row n = 4 e4m3 bytes of k = 4w..4w+3 (little-endian)
    lay_w: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BK // 16), BK // 16], [DEC_WARPS, 1], [1, 0])
    c_view: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
    rows = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, lay_s))
    shift = gl.load(shift_ptr + rows, mask=rows < N, other=1.0)
    sb_next = gl.zeros([BN, BK // 16], gl.uint8, lay_s)
    for ki in range(num_k):
        cs = ki % CSTAGES
        cph = (ki // CSTAGES) & 1
        mbarrier.wait(c_ready.index(cs), cph)
        codes = c_bufs.index(cs)._reinterpret(gl.uint16, [BN, BK // 16, 4], c_view).load(lay3)
        if ki % 2 == 0:
            sb = sc_bufs.index(cs).slice(0, BK // 16, dim=1).load(lay_s)
            sb_next = sc_bufs.index(cs).slice(BK // 16, BK // 16, dim=1).load(lay_s)
        else:
            sb = sb_next
        gl.thread_barrier()
        mbarrier.arrive(c_empty.index(cs), count=1)
        s = ki % STAGES
        ph = (ki // STAGES) & 1
        if LUT % 10 < 2:
            sc = sb.to(gl.float8e4nv, bitcast=True).to(gl.float32) * shift[:, None]
            sc3 = gl.broadcast(gl.expand_dims(sc, 2), codes)[0]
            if LUT % 10 == 1:
                q3 = _block_e4m3(codes.to(gl.int32), sc3)
            else:
                q3 = _quad_e4m3(codes.to(gl.int32), sc3 * 64.0)
            q = gl.convert_layout(gl.reshape(q3, [BN, BK // 4]), lay_w, assert_trivial=True)
        elif LUT % 10 == 3:  # diagnostic: store the codes without decoding
            q = gl.convert_layout(gl.reshape(codes.to(gl.int32), [BN, BK // 4]), lay_w, assert_trivial=True)
        mbarrier.wait(w_empty.index(s), ph ^ 1)
        if LUT % 10 != 2:
            w_bufs.index(s).store(q)
        fence_async_shared()
        gl.thread_barrier()
        mbarrier.arrive(w_ready.index(s), count=1)


@gluon.jit
def _mma_partition(
    x_bufs,
    w_bufs,
    x_ready,
    x_empty,
    w_ready,
    w_empty,
    xs_ptr,
    cs_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    off_m,
    off_n,
    num_k,
    stride_ym,
    HAS_BIAS: gl.constexpr,
    BM: gl.constexpr,
    BN: gl.constexpr,
    BK: gl.constexpr,
    STAGES: gl.constexpr,
    LUT: gl.constexpr,
    num_warps: gl.constexpr,
):
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 32]
    )
    w8_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=min(128, BK), element_bitwidth=8, rank=2)
    acc = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    for ki in range(num_k):
        s = ki % STAGES
        ph = (ki // STAGES) & 1
        mbarrier.wait(x_ready.index(s), ph)
        mbarrier.wait(w_ready.index(s), ph)
        if LUT < 10:  # LUT >= 10: diagnostic without the MMAs
            w8 = w_bufs.index(s)._reinterpret(gl.float8e4nv, [BN, BK], w8_layout)
            acc = warpgroup_mma(x_bufs.index(s), w8.permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        if ki > 0:
            sp = (ki - 1) % STAGES
            mbarrier.arrive(x_empty.index(sp), count=1)
            mbarrier.arrive(w_empty.index(sp), count=1)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, mma_layout))
    cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, mma_layout))
    r_ok = rows < M
    c_ok = cols < N
    acc = acc * gl.load(xs_ptr + rows, mask=r_ok, other=0.0)[:, None]
    acc = acc * gl.load(cs_ptr + cols, mask=c_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + gl.load(bias_ptr + cols, mask=c_ok, other=0.0).to(gl.float32)[None, :]
    gl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(gl.bfloat16), mask=r_ok[:, None] & c_ok[None, :])


@gluon.jit
def w4a8_ws_kernel(
    x_desc, c_desc, sc_desc, shift_ptr, xs_ptr, cs_ptr, bias_ptr, y_ptr, M, N, K, stride_ym,
    HAS_BIAS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
    CSTAGES: gl.constexpr, DEC_WARPS: gl.constexpr, DEC_REGS: gl.constexpr, LUT: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    pid = gl.program_id(0)
    num_m = gl.cdiv(M, BM)
    off_m = (pid % num_m) * BM
    off_n = (pid // num_m) * BN
    num_k = K // BK
    x_bufs = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BM, BK], x_desc.layout)
    c_bufs = gl.allocate_shared_memory(gl.uint8, [CSTAGES, BN, BK // 2], c_desc.layout)
    sc_bufs = gl.allocate_shared_memory(gl.uint8, [CSTAGES, BN, 2 * (BK // 16)], sc_desc.layout)
    w_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=min(128, BK), element_bitwidth=32, rank=2)
    w_bufs = gl.allocate_shared_memory(gl.int32, [STAGES, BN, BK // 4], w_layout)
    x_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    x_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    w_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    w_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    c_ready = gl.allocate_shared_memory(gl.int64, [CSTAGES, 1], mbarrier.MBarrierLayout())
    c_empty = gl.allocate_shared_memory(gl.int64, [CSTAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(x_ready.index(i), count=1)
        mbarrier.init(x_empty.index(i), count=1)
        mbarrier.init(w_ready.index(i), count=1)
        mbarrier.init(w_empty.index(i), count=1)
    for i in gl.static_range(CSTAGES):
        mbarrier.init(c_ready.index(i), count=1)
        mbarrier.init(c_empty.index(i), count=1)
    gl.warp_specialize(
        [
            (_mma_partition, (x_bufs, w_bufs, x_ready, x_empty, w_ready, w_empty, xs_ptr, cs_ptr, bias_ptr, y_ptr, M, N,
                              off_m, off_n, num_k, stride_ym, HAS_BIAS, BM, BN, BK, STAGES, LUT, num_warps)),
            (_x_load_partition, (x_desc, x_bufs, x_ready, x_empty, off_m, num_k, BK, STAGES)),
            (_code_load_partition, (c_desc, sc_desc, c_bufs, sc_bufs, c_ready, c_empty, off_n, num_k, BK, CSTAGES)),
            (_decode_partition, (shift_ptr, c_bufs, sc_bufs, c_ready, c_empty, w_bufs, w_ready, w_empty, N, off_n,
                                 num_k, BN, BK, STAGES, CSTAGES, DEC_WARPS, LUT)),
        ],
        [1, 1, DEC_WARPS],
        [24, 24, DEC_REGS],
    )  # fmt: skip


def descriptors(q, packed, scale, BM, BN, BK):
    """TMA descriptors: x tiles [BM, BK] (128B-swizzled for wgmma), code tiles [BN, BK/2] bytes and
    scale tiles [BN, 16] bytes (two k-steps), both unswizzled (the decode warps read whole rows)."""
    assert BK == 128, "the scale box holds two k-steps of 8 block scales"
    flat8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)
    x_desc = TensorDescriptor.from_tensor(q, [BM, BK], gl.NVMMASharedLayout.get_default_for([BM, BK], gl.float8e4nv))
    c_desc = TensorDescriptor.from_tensor(packed, [BN, BK // 2], flat8)
    sc_desc = TensorDescriptor.from_tensor(scale.view(torch.uint8), [BN, 2 * (BK // 16)], flat8)
    return x_desc, c_desc, sc_desc


def launch(
    q, xs, packed, scale, shift, col_scale, bias, y, BM, BN, BK, STAGES, CSTAGES, DEC_WARPS, DEC_REGS, num_warps, LUT=1
):
    """``q``/``xs``: per-token FP8 activations; ``packed``/``scale``: NVFP4 weight (uint8 [N, K/2],
    e4m3 [N, K/16], rows 16-byte aligned); ``shift``: its fp8_row_shift; ``col_scale = alpha / shift``;
    K a multiple of BK."""
    m, k = q.shape
    n = packed.shape[0]
    grid = (triton.cdiv(m, BM) * triton.cdiv(n, BN),)
    w4a8_ws_kernel[grid](
        *descriptors(q, packed, scale, BM, BN, BK), shift, xs, col_scale, bias, y, m, n, k, y.stride(0),
        HAS_BIAS=bias is not None, BM=BM, BN=BN, BK=BK, STAGES=STAGES, CSTAGES=CSTAGES, DEC_WARPS=DEC_WARPS,
        DEC_REGS=DEC_REGS, LUT=int(LUT), num_warps=num_warps,
    )  # fmt: skip
