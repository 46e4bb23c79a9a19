"""Experiment (session 13), not used by the pack: a swap-AB W4A8 GEMM in Gluon for Hopper whose decoded
weights never touch shared memory.

``y^T[N, M] = dec(W)[N, K] @ q(x)[M, K]^T``, scaled by ``xs[m] * col_scale[n]`` plus ``bias[n]``, bf16 out
(written to ``y[M, N]``). ``dec(W)`` is the e4m3 decode of the packed NVFP4 weight (the bytes of
``kernels.backends.weight_decode``). One CTA per (BN weight rows, BT tokens) tile; partitions:

* default (``num_warps`` = BN / 16): reads a k-step of codes and block scales from smem straight into
  the register layout of wgmma's A operand (e4m3, k_width 4: 4 consecutive k per 32-bit register),
  decodes them there (one inline-asm call per 4 codes), and issues an async wgmma with the x tile
  (smem) as B, so the decode of step k + 1 runs while the wgmma of step k is in flight (ptxas
  serialized the wgmmas, C7515, until ``gl.assume(num_k >= 2)`` removed the loop's zero-trip path);
* workers: the two 1-warp TMA load partitions of ``w4a8_ws_gluon`` (x tiles ``[BT, BK]``; code tiles
  ``[BN, BK/2]`` bytes, element 2i in the low nibble of byte i, and ``[BN, 16]`` scale boxes).

The register layouts of the codes and scales are the A-operand layout with k split as
``(k // 2, k % 2)`` and ``(k // 16, k % 16)`` and the inner part dropped, so expanding them back
(``expand_dims`` + ``broadcast`` + ``reshape``) lands on the A layout without data movement.
Measured 0.53-0.57x bf16 at M = 512 on the H100 while serialized, 0.70-0.84x after (session 14). BK = 128. Run with
``bench/probes/bench_w4a8_ws_gluon.py SHAPES BN/BT/BK/STAGES/CSTAGES,... w4a8_swapab_gluon``.
"""

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
from w4a8_ws_gluon import (
    _E4M3_FORM_TIMES_SCALE,
    _NIBBLES_TO_E4M3_FORM,
    _code_load_partition,
    _x_load_partition,
    descriptors,
)

# codes bytes (b0, b0, b1, b1) are already the t of _NIBBLES_TO_E4M3_FORM; the scale is e4m3 byte 0
# of $2 x row shift ($3) x 2**6, rounded to f16
_DECODE4_ASM = gl.constexpr(
    """{
        .reg .b32 t, u, e, f0, f1, s2, sf;
        .reg .b16 h0, h1, q0, q1, sh, sb;
        .reg .f32 s;
        mov.b32 t, $1;"""
    + _NIBBLES_TO_E4M3_FORM
    + """
        mov.b32 {sb, h0}, $2;
        cvt.rn.f16x2.e4m3x2 sf, sb;
        mov.b32 {sh, h1}, sf;
        cvt.f32.f16 s, sh;
        mul.f32 s, s, $3;
        mul.f32 s, s, 0f42800000;
        cvt.rn.f16.f32 sh, s;"""
    + _E4M3_FORM_TIMES_SCALE
    + "\n        }"
)


@gluon.jit
def _decode4(codes, sb, shift):
    """pack=4 over the A layout: $1 = codes bytes (b0, b0, b1, b1: codes of k = 4g..4g+3, element i in
    nibble i of b0 | b1 << 8), $2 = block-scale bytes (s, s, s, s; e4m3), $3 = row shift (float32;
    $4..$6 the same) -> $0 = 4 e4m3 bytes of code x scale x shift, rounded once (the E4M3 form of a
    code is its value x 2**-6, hence the 64)."""
    return gl.inline_asm_elementwise(
        asm=_DECODE4_ASM,
        constraints="=r,r,r,f,f,f,f",
        args=[codes, sb, shift],
        dtype=gl.float8e4nv,
        is_pure=True,
        pack=4,
    )


@gluon.jit
def _decode_step(codes, sb, shift, BN: gl.constexpr, BK: gl.constexpr, L_CODE3: gl.constexpr,
                 L_SCALE3: gl.constexpr, a_layout: gl.constexpr):  # fmt: skip
    """One k-step's A operand: codes [BN, BK/2] bytes and block scales [BN, BK/16] (layouts: the A
    layout with k split, see the module doc) expanded to the A layout and decoded."""
    # codes (n, k) = byte k // 2, scales (n, k) = scale k // 16
    c3 = gl.broadcast(gl.expand_dims(codes, 2), gl.zeros([BN, BK // 2, 2], gl.uint8, L_CODE3))[0]
    s3 = gl.broadcast(gl.expand_dims(sb, 2), gl.zeros([BN, BK // 16, 16], gl.uint8, L_SCALE3))[0]
    c_a = gl.convert_layout(gl.reshape(c3, [BN, BK]), a_layout, assert_trivial=True)
    s_a = gl.convert_layout(gl.reshape(s3, [BN, BK]), a_layout, assert_trivial=True)
    return _decode4(c_a, s_a, gl.broadcast(gl.expand_dims(shift, 1), c_a)[0])


@gluon.jit
def _mma_partition(
    x_bufs, c_bufs, sc_bufs, x_ready, x_empty, c_ready, c_empty, shift_ptr, xs_ptr, cs_ptr, bias_ptr, y_ptr, M, N,
    off_n, off_t, num_k, stride_ym, HAS_BIAS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr,
    STAGES: gl.constexpr, CSTAGES: gl.constexpr, L_CODE3: gl.constexpr, L_SCALE3: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BT, 32]
    )
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=4)
    l_code: gl.constexpr = gl.SliceLayout(2, L_CODE3)
    l_scale: gl.constexpr = gl.SliceLayout(2, L_SCALE3)
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    rows = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, a_layout))
    shift = gl.load(shift_ptr + rows, mask=rows < N, other=1.0)
    acc = gl.zeros((BN, BT), dtype=gl.float32, layout=mma_layout)
    # two k-steps per iteration (the scale box holds two), with distinct A values for the two steps
    # without this, LLVM keeps a zero-trip path whose zero accumulator joins the in-flight wgmma's at
    # the loop exit, and ptxas serializes every wgmma (C7515)
    gl.assume(num_k >= 2)
    for kk in range(0, num_k, 2):
        cs = kk % CSTAGES
        mbarrier.wait(c_ready.index(cs), (kk // CSTAGES) & 1)
        codes0 = c_bufs.index(cs)._reinterpret(gl.uint8, [BN, BK // 2], flat).load(l_code)
        sb0 = sc_bufs.index(cs).slice(0, BK // 16, dim=1).load(l_scale)
        sb1 = sc_bufs.index(cs).slice(BK // 16, BK // 16, dim=1).load(l_scale)
        mbarrier.arrive(c_empty.index(cs), count=1)
        a0 = _decode_step(codes0, sb0, shift, BN, BK, L_CODE3, L_SCALE3, a_layout)
        s = kk % STAGES
        mbarrier.wait(x_ready.index(s), (kk // STAGES) & 1)
        acc = warpgroup_mma(a0, x_bufs.index(s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        if kk > 0:
            mbarrier.arrive(x_empty.index((kk - 1) % STAGES), count=1)
        cs = (kk + 1) % CSTAGES
        mbarrier.wait(c_ready.index(cs), ((kk + 1) // CSTAGES) & 1)
        codes1 = c_bufs.index(cs)._reinterpret(gl.uint8, [BN, BK // 2], flat).load(l_code)
        mbarrier.arrive(c_empty.index(cs), count=1)
        a1 = _decode_step(codes1, sb1, shift, BN, BK, L_CODE3, L_SCALE3, a_layout)
        s = (kk + 1) % STAGES
        mbarrier.wait(x_ready.index(s), ((kk + 1) // STAGES) & 1)
        acc = warpgroup_mma(a1, x_bufs.index(s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        mbarrier.arrive(x_empty.index(kk % STAGES), count=1)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    n_idx = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, mma_layout))
    t_idx = off_t + gl.arange(0, BT, layout=gl.SliceLayout(0, mma_layout))
    n_ok = n_idx < N
    t_ok = t_idx < M
    acc = acc * gl.load(cs_ptr + n_idx, mask=n_ok, other=0.0)[:, None]
    acc = acc * gl.load(xs_ptr + t_idx, mask=t_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + gl.load(bias_ptr + n_idx, mask=n_ok, other=0.0).to(gl.float32)[:, None]
    out_ptrs = y_ptr + t_idx[None, :] * stride_ym + n_idx[:, None]
    gl.store(out_ptrs, acc.to(gl.bfloat16), mask=n_ok[:, None] & t_ok[None, :])


@gluon.jit
def w4a8_swapab_kernel(
    x_desc, c_desc, sc_desc, shift_ptr, xs_ptr, cs_ptr, bias_ptr, y_ptr, M, N, K, stride_ym,
    HAS_BIAS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
    CSTAGES: gl.constexpr, L_CODE3: gl.constexpr, L_SCALE3: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    pid = gl.program_id(0)
    num_t = gl.cdiv(M, BT)
    off_t = (pid % num_t) * BT
    off_n = (pid // num_t) * BN
    num_k = K // BK
    x_bufs = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BT, BK], x_desc.layout)
    c_bufs = gl.allocate_shared_memory(gl.uint8, [CSTAGES, BN, BK // 2], c_desc.layout)
    sc_bufs = gl.allocate_shared_memory(gl.uint8, [CSTAGES, BN, 2 * (BK // 16)], sc_desc.layout)
    x_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    x_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    c_ready = gl.allocate_shared_memory(gl.int64, [CSTAGES, 1], mbarrier.MBarrierLayout())
    c_empty = gl.allocate_shared_memory(gl.int64, [CSTAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(x_ready.index(i), count=1)
        mbarrier.init(x_empty.index(i), count=1)
    for i in gl.static_range(CSTAGES):
        mbarrier.init(c_ready.index(i), count=1)
        mbarrier.init(c_empty.index(i), count=1)
    gl.warp_specialize(
        [
            (_mma_partition, (x_bufs, c_bufs, sc_bufs, x_ready, x_empty, c_ready, c_empty, shift_ptr, xs_ptr, cs_ptr,
                              bias_ptr, y_ptr, M, N, off_n, off_t, num_k, stride_ym, HAS_BIAS, BN, BT, BK, STAGES,
                              CSTAGES, L_CODE3, L_SCALE3, num_warps)),
            (_x_load_partition, (x_desc, x_bufs, x_ready, x_empty, off_t, num_k, BK, STAGES)),
            (_code_load_partition, (c_desc, sc_desc, c_bufs, sc_bufs, c_ready, c_empty, off_n, num_k, BK, CSTAGES)),
        ],
        [1, 1],
        [24, 24],
    )  # fmt: skip


def a_operand_bases(bn: int, bk: int, num_warps: int) -> dict:
    """Linear-layout bases (row, k) of wgmma's e4m3 A operand in registers for a [bn, bk] tile with
    ``num_warps`` warps along the rows (k_width 4), as Triton 3.6 lays it out."""
    assert bn == 16 * num_warps and bk >= 32
    reg = [[0, 1], [0, 2], [8, 0]] + [[0, 16 << i] for i in range((bk // 32).bit_length())]
    lane = [[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]]
    warp = [[16 << i, 0] for i in range(num_warps.bit_length() - 1)]
    return {"reg": reg, "lane": lane, "warp": warp}


def split_k_layout(bases: dict, bn: int, bk: int, inner: int) -> gl.DistributedLinearLayout:
    """The A layout with k split as (k // inner, k % inner): a [bn, bk / inner, inner] layout."""

    def split(b):
        return [b[0], b[1] // inner, b[1] % inner]

    return gl.DistributedLinearLayout(
        reg_bases=[split(b) for b in bases["reg"]],
        lane_bases=[split(b) for b in bases["lane"]],
        warp_bases=[split(b) for b in bases["warp"]],
        block_bases=[],
        shape=[bn, bk // inner, inner],
    )


def launch(q, xs, packed, scale, shift, col_scale, bias, y, BN, BT, BK, STAGES, CSTAGES):
    """``q``/``xs``: per-token FP8 activations; ``packed``/``scale``: NVFP4 weight (uint8 [N, K/2],
    e4m3 [N, K/16], rows 16-byte aligned); ``shift``: its fp8_row_shift; ``col_scale = alpha / shift``;
    K a multiple of 2 * BK."""
    m, k = q.shape
    n = packed.shape[0]
    num_warps = BN // 16
    bases = a_operand_bases(BN, BK, num_warps)
    grid = (triton.cdiv(m, BT) * triton.cdiv(n, BN),)
    w4a8_swapab_kernel[grid](
        *descriptors(q, packed, scale, BT, BN, BK), shift, xs, col_scale, bias, y, m, n, k, y.stride(0),
        HAS_BIAS=bias is not None, BN=BN, BT=BT, BK=BK, STAGES=STAGES, CSTAGES=CSTAGES,
        L_CODE3=split_k_layout(bases, BN, BK, 2), L_SCALE3=split_k_layout(bases, BN, BK, 16), num_warps=num_warps,
    )  # fmt: skip
