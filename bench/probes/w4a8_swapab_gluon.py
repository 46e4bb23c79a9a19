"""Experiment (sessions 13-14), not used by the pack: a swap-AB W4A8 GEMM in Gluon for Hopper whose
decoded weights never touch shared memory.

``y^T[N, M] = dec(W)[N, K] @ q(x)[M, K]^T``, scaled by ``xs[m] * col_scale[n]`` plus ``bias[n]``, bf16 out
(written to ``y[M, N]``). ``dec(W)`` is the e4m3 decode of the packed NVFP4 weight (the bytes of
``kernels.backends.weight_decode``). One CTA per (BN weight rows, BT tokens) tile; partitions:

* default (``num_warps`` = BN / 16): decodes a k-step of codes into wgmma's A-operand registers and
  issues an async wgmma with the x tile (smem) as B, so the decode of step k + 1 runs while the
  wgmma of step k is in flight;
* workers: the two 1-warp TMA load partitions of ``w4a8_ws_gluon`` (x tiles ``[BT, BK]``; code tiles
  ``[BN, BK/2]`` bytes in ModelOpt order, element 2i in the low nibble of byte i; ``[BN, 16]`` scale
  boxes, two k-steps each).

**K order.** In wgmma's A layout (e4m3, k_width 4) lane ``c = lane % 4`` of a row holds the k
positions ``p = 4c + i + 16j`` (i < 4, j < 8) of a 128-wide k-step. The kernel feeds position ``p``
the weight column ``k = 32c + 4j + i``, so each lane's 32 codes of a row are 16 contiguous bytes
(one vector load) in exactly two scale blocks, and the activations come quantized in the same
order (``quantize_permuted``: column ``k`` of each 128-chunk stored at position ``p``; the GEMM sums
over k, so the order is free). Per scale block a thread rounds the 8 magnitudes x scale x row
shift once (a byte table), then each A register (4 codes) is one ``prmt`` from the table plus the
sign bits: 6 integer instructions.

Layouts are linear layouts derived from the A layout; ``assert_trivial`` checks that the reshapes
between them move no data. BK = 128, K a multiple of 256. Run with
``bench/probes/bench_w4a8_ws_gluon.py SHAPES BN/BT/BK/STAGES/CSTAGES,... w4a8_swapab_gluon``.
"""

import torch
import triton
import triton.language as tl
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
from triton.language.extra.cuda import gdc_launch_dependents
from w4a8_ws_gluon import _code_load_partition, _x_load_partition, descriptors

_TABLE_ASM = gl.constexpr(
    """{
        .reg .b32 s2, m01, m23, m45, m67;
        .reg .b16 sb, q0, q1, q2, q3;
        prmt.b32 s2, $2, 0, 0x0000;
        cvt.u16.u32 sb, s2;
        cvt.rn.f16x2.e4m3x2 s2, sb;
        mul.rn.f16x2 s2, s2, $3;
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
        mov.b32 $0, {q0, q1};
        mov.b32 $1, {q2, q3};
        }"""
)


@gluon.jit
def _tables(sb, shift2):
    """Block scale bytes (int32, e4m3 in the low 8 bits) and row shifts (``_f16x2(shift)``) -> (lo, hi):
    byte m of the 8-byte table ``lo | hi << 32`` = e4m3(magnitude m x scale x shift), magnitudes (0,
    0.5, 1, 1.5, 2, 3, 4, 6). fp16 holds scale x shift (a power of two in [2**-3, 2**15] by
    ``fp8_row_shift``'s construction, so the product lies in [2**-12, 75] with <= 4 significant bits)
    and its products with the magnitudes exactly, so each byte is rounded once."""
    return gl.inline_asm_elementwise(
        asm=_TABLE_ASM, constraints="=r,=r,r,r", args=[sb, shift2], dtype=(gl.int32, gl.int32), is_pure=True, pack=1
    )


@gluon.jit
def _f16x2(x):
    """float32 -> int32 holding the fp16 pair (x, x)."""
    return gl.inline_asm_elementwise(
        asm="{ .reg .b16 h; cvt.rn.f16.f32 h, $1; mov.b32 $0, {h, h}; }",
        constraints="=r,f",
        args=[x],
        dtype=gl.int32,
        is_pure=True,
        pack=1,
    )


# The two A words of a ModelOpt-order code word w (8 codes, code n in nibble n): for each half
# (codes 0-3, then 4-7: the low 16 bits of w >> 16), the magnitudes are picked from the block's table
# by one prmt with the sign bits masked off; a second prmt from 0x80808080 with the raw nibbles as
# selector gives 0x80 for a positive code, 0xFF (msb replicated) for a negative one, so bit 0 of its
# byte i, shifted to bit 7, is code i's sign.
_WORDS_ASM = gl.constexpr(
    """{
        .reg .b32 sel, g, t, sg, hi;
        mov.b32 sg, 0x80808080;
        and.b32 sel, $2, 0x7777;
        prmt.b32 g, $3, $4, sel;
        prmt.b32 t, sg, sg, $2;
        shl.b32 t, t, 7;
        lop3.b32 $0, g, t, 0x80808080, 0xF8;
        shr.u32 hi, $2, 16;
        and.b32 sel, hi, 0x7777;
        prmt.b32 g, $3, $4, sel;
        prmt.b32 t, sg, sg, hi;
        shl.b32 t, t, 7;
        lop3.b32 $1, g, t, 0x80808080, 0xF8;
        }"""
)


@gluon.jit
def _decode_words(words, lo, hi):
    """A code word (8 codes, ModelOpt order) and its block's table -> the two A words it holds (codes
    0-3 and 4-7, 4 e4m3 bytes each)."""
    return gl.inline_asm_elementwise(
        asm=_WORDS_ASM,
        constraints="=r,=r,r,r,r",
        args=[words, lo, hi],
        dtype=(gl.int32, gl.int32),
        is_pure=True,
        pack=1,
    )


@gluon.jit
def _as_e4m3(words):
    """int32 words (4 e4m3 bytes each) broadcast 4x over the A layout -> e4m3 A operand (no-op)."""
    return gl.inline_asm_elementwise(
        asm="mov.b32 $0, $1;", constraints="=r,r,r,r,r", args=[words], dtype=gl.float8e4nv, is_pure=True, pack=4
    )


@gluon.jit
def _decode_step(words, sb, shift2, BN: gl.constexpr, BK: gl.constexpr, L_W3: gl.constexpr, L_T4: gl.constexpr,
                 L_W4: gl.constexpr, L_A3: gl.constexpr, a_layout: gl.constexpr):  # fmt: skip
    """One k-step's A operand from its code words ``[BN, BK/8]`` (word 4c + t: k = 32c + 8t .. + 7, in
    ModelOpt order) and scale bytes ``[BN, BK/16]`` (block 2c + h) in the layouts of
    ``layouts()``."""
    w3 = gl.convert_layout(gl.permute(gl.reshape(words, [BN, 4, 4]), (0, 2, 1)), L_W3, assert_trivial=True)
    # the table of code word (t, c) is block 2c + t // 2
    lo, hi = _tables(sb.to(gl.int32), gl.broadcast(gl.expand_dims(shift2, 1), sb)[0])
    z = gl.zeros([BN, 2, 2, 4], gl.int32, L_T4)
    t_lo = gl.convert_layout(gl.permute(gl.reshape(lo, [BN, 4, 2]), (0, 2, 1)), gl.SliceLayout(2, L_T4),
                             assert_trivial=True)  # fmt: skip
    t_hi = gl.convert_layout(gl.permute(gl.reshape(hi, [BN, 4, 2]), (0, 2, 1)), gl.SliceLayout(2, L_T4),
                             assert_trivial=True)  # fmt: skip
    t_lo = gl.convert_layout(gl.reshape(gl.broadcast(gl.expand_dims(t_lo, 2), z)[0], [BN, 4, 4]), L_W3,
                             assert_trivial=True)  # fmt: skip
    t_hi = gl.convert_layout(gl.reshape(gl.broadcast(gl.expand_dims(t_hi, 2), z)[0], [BN, 4, 4]), L_W3,
                             assert_trivial=True)  # fmt: skip
    a_x, a_y = _decode_words(w3, t_lo, t_hi)
    # A word q = c + 4j, j = 2t + jl: jl = 0 is a_x, 1 is a_y
    zw = gl.zeros([BN, 4, 2, 4], gl.int32, L_W4)
    a_x = gl.broadcast(gl.expand_dims(gl.convert_layout(a_x, gl.SliceLayout(2, L_W4), assert_trivial=True), 2), zw)[0]
    a_y = gl.broadcast(gl.expand_dims(gl.convert_layout(a_y, gl.SliceLayout(2, L_W4), assert_trivial=True), 2), zw)[0]
    jl = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, L_W4))))
    a4 = gl.where(gl.expand_dims(gl.expand_dims(gl.expand_dims(jl, 0), 1), 3) == 1, a_y, a_x)
    a4 = gl.convert_layout(gl.reshape(a4, [BN, BK // 4]), gl.SliceLayout(2, L_A3), assert_trivial=True)
    a3 = gl.broadcast(gl.expand_dims(a4, 2), gl.zeros([BN, BK // 4, 4], gl.int32, L_A3))[0]
    return _as_e4m3(gl.convert_layout(gl.reshape(a3, [BN, BK]), a_layout, assert_trivial=True))


@gluon.jit
def _grid_dependency_wait():
    """``griddepcontrol.wait``: the activations' quantization (the previous grid, launched with PDL)
    has finished and its writes are visible; a no-op without PDL."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _x_load_after_quant(x_desc, x_bufs, x_ready, x_empty, off_t, num_k, BK: gl.constexpr, STAGES: gl.constexpr):
    _grid_dependency_wait()
    _x_load_partition(x_desc, x_bufs, x_ready, x_empty, off_t, num_k, BK, STAGES)


@gluon.jit
def _mma_partition(
    x_bufs, c_bufs, sc_bufs, x_ready, x_empty, c_ready, c_empty, shift_ptr, xs_ptr, cs_ptr, bias_ptr, y_desc, y_smem,
    M, N, off_n, off_t, num_k, HAS_BIAS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr,
    STAGES: gl.constexpr, CSTAGES: gl.constexpr, L_W: gl.constexpr, L_S: gl.constexpr, L_W3: gl.constexpr,
    L_T4: gl.constexpr, L_W4: gl.constexpr, L_A3: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BT, 32]
    )
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=4)
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    rows = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, L_S))
    shift2 = _f16x2(gl.load(shift_ptr + rows, mask=rows < N, other=1.0))
    acc = gl.zeros((BN, BT), dtype=gl.float32, layout=mma_layout)
    # without this, LLVM keeps a zero-trip path whose zero accumulator joins the in-flight wgmma's at
    # the loop exit, and ptxas serializes every wgmma (C7515)
    gl.assume(num_k >= 2)
    # two k-steps per iteration (the scale box holds two)
    for kk in range(0, num_k, 2):
        cs = kk % CSTAGES
        mbarrier.wait(c_ready.index(cs), (kk // CSTAGES) & 1)
        w0 = c_bufs.index(cs)._reinterpret(gl.int32, [BN, BK // 8], flat).load(L_W)
        sb0 = sc_bufs.index(cs).slice(0, BK // 16, dim=1).load(L_S)
        sb1 = sc_bufs.index(cs).slice(BK // 16, BK // 16, dim=1).load(L_S)
        mbarrier.arrive(c_empty.index(cs), count=1)
        a0 = _decode_step(w0, sb0, shift2, BN, BK, L_W3, L_T4, L_W4, L_A3, a_layout)
        s = kk % STAGES
        mbarrier.wait(x_ready.index(s), (kk // STAGES) & 1)
        acc = warpgroup_mma(a0, x_bufs.index(s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        if kk > 0:
            mbarrier.arrive(x_empty.index((kk - 1) % STAGES), count=1)
        cs = (kk + 1) % CSTAGES
        mbarrier.wait(c_ready.index(cs), ((kk + 1) // CSTAGES) & 1)
        w1 = c_bufs.index(cs)._reinterpret(gl.int32, [BN, BK // 8], flat).load(L_W)
        mbarrier.arrive(c_empty.index(cs), count=1)
        a1 = _decode_step(w1, sb1, shift2, BN, BK, L_W3, L_T4, L_W4, L_A3, a_layout)
        s = (kk + 1) % STAGES
        mbarrier.wait(x_ready.index(s), ((kk + 1) // STAGES) & 1)
        acc = warpgroup_mma(a1, x_bufs.index(s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        mbarrier.arrive(x_empty.index(kk % STAGES), count=1)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    _grid_dependency_wait()  # xs comes from the quantization grid
    n_idx = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, mma_layout))
    t_idx = off_t + gl.arange(0, BT, layout=gl.SliceLayout(0, mma_layout))
    n_ok = n_idx < N
    acc = acc * gl.load(cs_ptr + n_idx, mask=n_ok, other=0.0)[:, None]
    acc = acc * gl.load(xs_ptr + t_idx, mask=t_idx < M, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + gl.load(bias_ptr + n_idx, mask=n_ok, other=0.0).to(gl.float32)[:, None]
    # y^T tile -> smem as [BT, BN] -> one TMA store (clipped at M and N)
    y_smem.store(gl.permute(acc.to(gl.bfloat16), (1, 0)))
    fence_async_shared()
    tma.async_copy_shared_to_global(y_desc, [off_t, off_n], y_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def w4a8_swapab_kernel(
    x_desc, c_desc, sc_desc, shift_ptr, xs_ptr, cs_ptr, bias_ptr, y_desc, M, N, K,
    HAS_BIAS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
    CSTAGES: gl.constexpr, L_W: gl.constexpr, L_S: gl.constexpr, L_W3: gl.constexpr, L_T4: gl.constexpr,
    L_W4: gl.constexpr, L_A3: gl.constexpr, num_warps: gl.constexpr,
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
    y_smem = gl.allocate_shared_memory(gl.bfloat16, [BT, BN], y_desc.layout)
    for i in gl.static_range(STAGES):
        mbarrier.init(x_ready.index(i), count=1)
        mbarrier.init(x_empty.index(i), count=1)
    for i in gl.static_range(CSTAGES):
        mbarrier.init(c_ready.index(i), count=1)
        mbarrier.init(c_empty.index(i), count=1)
    gl.warp_specialize(
        [
            (_mma_partition, (x_bufs, c_bufs, sc_bufs, x_ready, x_empty, c_ready, c_empty, shift_ptr, xs_ptr, cs_ptr,
                              bias_ptr, y_desc, y_smem, M, N, off_n, off_t, num_k, HAS_BIAS, BN, BT, BK, STAGES,
                              CSTAGES, L_W, L_S, L_W3, L_T4, L_W4, L_A3, num_warps)),
            (_x_load_after_quant, (x_desc, x_bufs, x_ready, x_empty, off_t, num_k, BK, STAGES)),
            (_code_load_partition, (c_desc, sc_desc, c_bufs, sc_bufs, c_ready, c_empty, off_n, num_k, BK, CSTAGES)),
        ],
        [1, 1],
        [24, 24],
    )  # fmt: skip


def _lin(reg, lane, warp, shape) -> gl.DistributedLinearLayout:
    return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=lane, warp_bases=warp, block_bases=[], shape=shape)


def layouts(bn: int, num_warps: int) -> dict:
    """The register layouts of one k-step (BK = 128) for ``num_warps`` warps along the weight rows
    (16 rows each; rows r and r + 8 in one thread, lane // 4 the row, lane % 4 = c):

    * ``L_W`` code words ``[bn, 16]`` int32 (word 4c + t) and ``L_W3`` the same as ``[bn, 4 (t), 4 (c)]``;
    * ``L_S`` scale bytes ``[bn, 8]`` (block 2c + h);
    * ``L_T4`` ``[bn, 2 (h), 2 (tl), 4 (c)]``: a block's table broadcast to its code words t = 2h + tl;
    * ``L_W4`` ``[bn, 4 (t), 2 (jl), 4 (c)]``: the A words q = c + 4j, j = 2t + jl;
    * ``L_A3``: wgmma's A layout as ``[bn, 32 (q), 4 (i)]``."""
    rows = [[1], [2], [4]]
    warp = [[16 << i] for i in range(num_warps.bit_length() - 1)]

    def nd(row_list, dims):  # row-only bases padded with zeros for the other dims
        return [r + [0] * dims for r in row_list]

    return {
        "L_W": _lin([[0, 1], [0, 2], [8, 0]], [[0, 4], [0, 8]] + nd(rows, 1), nd(warp, 1), [bn, 16]),
        "L_W3": _lin([[8, 0, 0], [0, 1, 0], [0, 2, 0]], [[0, 0, 1], [0, 0, 2]] + nd(rows, 2), nd(warp, 2), [bn, 4, 4]),
        "L_S": _lin([[0, 1], [8, 0]], [[0, 2], [0, 4]] + nd(rows, 1), nd(warp, 1), [bn, 8]),
        "L_T4": _lin(
            [[8, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]],
            [[0, 0, 0, 1], [0, 0, 0, 2]] + nd(rows, 3),
            nd(warp, 3),
            [bn, 2, 2, 4],
        ),
        "L_W4": _lin(
            [[8, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 2, 0, 0]],
            [[0, 0, 0, 1], [0, 0, 0, 2]] + nd(rows, 3),
            nd(warp, 3),
            [bn, 4, 2, 4],
        ),
        "L_A3": _lin(
            [[0, 0, 1], [0, 0, 2], [8, 0, 0], [0, 4, 0], [0, 8, 0], [0, 16, 0]],
            [[0, 1, 0], [0, 2, 0]] + nd(rows, 2),
            nd(warp, 2),
            [bn, 32, 4],
        ),
    }


@triton.jit
def _quantize_permuted_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
    gdc_launch_dependents()  # the GEMM (PDL) may start its weight loads and decode now
    row = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + row * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=0) / 448.0, 1e-12)
    q = tl.minimum(tl.maximum(x * (1.0 / scale), -448.0), 448.0)
    # within each 128 chunk: k = 32c + 4j + i -> position 4c + i + 16j
    p = (k & ~127) | (k & 3) | (((k >> 5) & 3) << 2) | (((k >> 2) & 7) << 4)
    tl.store(q_ptr + row * stride_qm + p, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=k < K)
    tl.store(s_ptr + row, scale)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token FP8 activations (as ``kernels.backends.fp8_act_quant``) in the kernel's K order."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    bk = triton.next_power_of_2(k)
    _quantize_permuted_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK_K=bk,
                                    num_warps=4 if bk <= 2048 else 8 if bk <= 8192 else 16)  # fmt: skip
    return q, s


def launch(q, xs, packed, scale, shift, col_scale, bias, y, BN, BT, BK, STAGES, CSTAGES):
    """``q``/``xs``: ``quantize(x)``; ``packed``/``scale``: NVFP4 weight (uint8 [N, K/2], e4m3 [N, K/16],
    rows 16-byte aligned); ``shift``: its fp8_row_shift; ``col_scale = alpha / shift``; BK = 128 and K a
    multiple of 256."""
    assert BK == 128
    m, k = q.shape
    n = packed.shape[0]
    num_warps = BN // 16
    grid = (triton.cdiv(m, BT) * triton.cdiv(n, BN),)
    y_desc = TensorDescriptor.from_tensor(y, [BT, BN], gl.NVMMASharedLayout.get_default_for([BT, BN], gl.bfloat16))
    w4a8_swapab_kernel[grid](
        *descriptors(q, packed, scale, BT, BN, BK), shift, xs, col_scale, bias, y_desc, m, n, k,
        HAS_BIAS=bias is not None, BN=BN, BT=BT, BK=BK, STAGES=STAGES, CSTAGES=CSTAGES, **layouts(BN, num_warps),
        num_warps=num_warps, launch_pdl=True,
    )  # fmt: skip
