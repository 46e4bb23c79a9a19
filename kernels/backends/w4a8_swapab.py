"""W4A8 GEMM for a few hundred tokens on Hopper (sm_90): NVFP4 weights decoded straight into wgmma's
register operand, never written to memory (Gluon; used by :mod:`.w4a8` for 256 <= M <= 1024).

``y[M, N] = (dec(W) @ q(x)^T)^T * xs[m] * alpha / shift[n] + bias[n]``, bf16 out, where ``q(x)``,
``xs`` are the per-token FP8 activations (:func:`.fp8_act_quant.quantize_act_fp8` with
``wgmma_k_order=True``) and ``dec(W)`` is the e4m3 decode of the packed weight times its row shift
(the bytes of :mod:`.weight_decode`). Swap-AB: the weight tile is wgmma's A operand (64 rows per
warpgroup, e4m3 in registers), the token tile its B operand (``[BT, BK]`` from shared memory), so the
decode of k-step i + 1 runs on the CUDA cores while the tensor cores do k-step i.

One CTA per (BN = 64 weight rows, BT = 256 tokens) tile, warp-specialized:

* default partition (one warpgroup): per k-step (BK = 128) reads the codes and block scales of its
  64 rows from shared memory, builds one 8-byte table per block scale (the 8 magnitudes x scale x
  row shift rounded to e4m3 once), decodes 4 codes per register with one ``prmt`` from the table plus
  their sign bits, issues the async wgmma, and keeps one in flight; epilogue: scales, bias, the
  transposed tile through shared memory, one TMA store. The per-row factors (alpha / shift, bias)
  are loaded before the main loop and the token scales come from shared memory, so no global load
  is left between the last wgmma and the store;
* two 1-warp partitions issue the TMA loads: token tiles into a ``STAGES`` ring, code tiles
  (``[BN, BK/2]`` bytes, ModelOpt order: element 2i in the low nibble of byte i) and scale tiles
  (``[BN, 16]`` bytes: two k-steps, as a TMA box must start 16-byte aligned) into a ``CSTAGES`` ring;
  the code loader then copies the tile's token scales into shared memory.

**K order.** In wgmma's A layout (e4m3, k_width 4) lane ``c = lane % 4`` of a row holds positions
``p = 4c + i + 16j`` (i < 4, j < 8) of a 128-wide k-step. The kernel feeds position ``p`` the weight
column ``k = 32c + 4j + i`` of that k-step, so each lane's 32 codes of a row are 16 contiguous bytes
(one vector load) in exactly two scale blocks, and the activations are quantized in the same order
(the GEMM sums over k, so any order common to both operands gives the same products).

The activation quantization launches the GEMM early (programmatic dependent launch): the GEMM's
weight loads and first decodes overlap it; its token loads and the staging of the token scales wait
for it (``griddepcontrol.wait``), and the epilogue waits for that staging (so it only runs once the
quantization grid, and every grid before it, has finished).

Under ``torch.compile`` this runs as the opaque op ``nvfp4_flux::w4a8_swapab`` (Inductor cannot
launch a Gluon kernel from its generated code). Gluon is Triton's experimental API: the kernel is
used with Triton 3.6 or newer (the version it was written and tested with). Measured on the H100
(bench/NOTES.md, session 16) on FLUX's M = 512 text-stream shapes: 1.01-1.28x cuBLAS bf16 in
``tools/bench_gemm.py`` (``bench/h100_gemm_v15.json``; the 3072 x 3072 projection is the 1.01x), where
decode + cuBLAS FP8 ran 0.76-0.95x.
"""

from __future__ import annotations

import functools

import torch
import triton

from ..tracing import is_tracing
from .fp8_act_quant import quantize_act_fp8

try:
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
except ImportError:  # a Triton without Gluon: the decode + cuBLAS path serves every M
    HAS_GLUON = False
else:
    HAS_GLUON = tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 6)

# The row range where it beats decode + cuBLAS FP8 (H100, qkv 9216 x 3072; bench/NOTES.md session 14):
# M = 128 38.0 vs 29.7 us, M = 256 27.7 vs 38.5, M = 1024 70.1 vs 71.7, M = 2048 144.8 vs 115.8.
SWAPAB_MIN_M, SWAPAB_MAX_M = 256, 1024
BN, BT, BK = 64, 256, 128
# ring depths (token tiles, code tiles): the best of those tried at M = 512 (bench/NOTES.md session 14),
# deeper where all CTAs run at once (proj and mlp2: 96 CTAs; qkv and mlp0 run in rounds)
STAGES_ONE_ROUND, STAGES_ROUNDS = (4, 8), (3, 4)


def swapab_supports(x2d: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> bool:
    """Whether :func:`w4a8_swapab_linear` takes this call: Gluon, an sm_90 GPU, bf16 activations with
    SWAPAB_MIN_M..SWAPAB_MAX_M rows, K a multiple of 256 up to 16384 (the permuted quantization holds a row in
    registers), N a multiple of 8 and 16-byte aligned operands (TMA)."""
    m, k = x2d.shape
    n = weight.shape[0]
    return (
        HAS_GLUON
        and x2d.is_cuda
        and x2d.dtype == torch.bfloat16
        and SWAPAB_MIN_M <= m <= SWAPAB_MAX_M
        and k % 256 == 0
        and k <= 16384
        and n % 8 == 0
        and _is_sm90(x2d.device)
        # 16-byte aligned starts (allocations are; fake tensors under tracing have no data pointer)
        and all(t.storage_offset() * t.element_size() % 16 == 0 for t in (weight, weight_scale))
        and weight.is_contiguous()
        and weight_scale.is_contiguous()
    )


@functools.cache
def _is_sm90(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) == (9, 0)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


if HAS_GLUON:

    @gluon.jit
    def _grid_dependency_wait():
        """``griddepcontrol.wait``: the activations' quantization (the previous grid, launched with
        PDL) has finished and its writes are visible; a no-op without PDL."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _x_load_partition(x_desc, x_bufs, x_ready, x_empty, off_t, num_k, BK: gl.constexpr, STAGES: gl.constexpr):
        _grid_dependency_wait()
        for ki in range(num_k):
            s = ki % STAGES
            mbarrier.wait(x_empty.index(s), ((ki // STAGES) & 1) ^ 1)
            mbarrier.expect(x_ready.index(s), x_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_t, ki * BK], x_ready.index(s), x_bufs.index(s))

    @gluon.jit
    def _code_load_partition(
        c_desc, sc_desc, c_bufs, sc_bufs, c_ready, c_empty, xs_ptr, xs_smem, xs_ready, M, off_n, off_t, num_k,
        BK: gl.constexpr, BT: gl.constexpr, CSTAGES: gl.constexpr,
    ):  # fmt: skip
        # codes [BN, BK/2] bytes of k-step ki; on even steps also the scales of steps ki and ki + 1
        for ki in range(num_k):
            s = ki % CSTAGES
            mbarrier.wait(c_empty.index(s), ((ki // CSTAGES) & 1) ^ 1)
            if ki % 2 == 0:
                mbarrier.expect(c_ready.index(s), c_desc.block_type.nbytes + sc_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(sc_desc, [off_n, ki * (BK // 16)], c_ready.index(s), sc_bufs.index(s))
            else:
                mbarrier.expect(c_ready.index(s), c_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(c_desc, [off_n, ki * (BK // 2)], c_ready.index(s), c_bufs.index(s))
        # then the tile's token scales (written by the quantization grid) into shared memory for the
        # epilogue, so that no global load is left between the last wgmma and the store
        _grid_dependency_wait()
        t_idx = off_t + gl.arange(0, BT, layout=gl.BlockedLayout([BT // 32], [32], [1], [0]))
        xs_smem.store(gl.load(xs_ptr + t_idx, mask=t_idx < M, other=0.0))
        gl.thread_barrier()
        mbarrier.arrive(xs_ready, count=1)

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

    @gluon.jit
    def _tables(sb, shift2):
        """Block scale bytes (int32, e4m3 in the low 8 bits) and row shifts (``_f16x2``) -> (lo, hi):
        byte m of the 8-byte table ``lo | hi << 32`` = e4m3(magnitude m x scale x shift), magnitudes
        (0, 0.5, 1, 1.5, 2, 3, 4, 6). fp16 holds scale x shift (the shift is a power of two in
        [2**-3, 2**15] by ``fp8_row_shift``'s construction, so the product lies in [2**-12, 75] with
        <= 4 significant bits) and its products with the magnitudes exactly: each byte is rounded
        once, as in :mod:`.weight_decode`."""
        return gl.inline_asm_elementwise(
            asm="""{
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
            }""",
            constraints="=r,=r,r,r",
            args=[sb, shift2],
            dtype=(gl.int32, gl.int32),
            is_pure=True,
            pack=1,
        )

    @gluon.jit
    def _decode_words(words, lo, hi):
        """A code word (8 codes, ModelOpt order: code n in nibble n) and its block's table -> its two
        A registers (codes 0-3 and 4-7, 4 e4m3 bytes each). Per half (the second from ``w >> 16``):
        the magnitudes come from the table by one ``prmt`` with the sign bits masked off; a second
        ``prmt`` from 0x80808080 with the raw nibbles as selector gives 0x80 for a positive code and
        0xFF (msb replicated) for a negative one, so bit 0 of its byte i, moved to bit 7, is code
        i's sign."""
        return gl.inline_asm_elementwise(
            asm="""{
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
            }""",
            constraints="=r,=r,r,r,r",
            args=[words, lo, hi],
            dtype=(gl.int32, gl.int32),
            is_pure=True,
            pack=1,
        )

    @gluon.jit
    def _as_e4m3(words):
        """int32 words (4 e4m3 bytes each) broadcast 4x over the A layout -> the e4m3 A operand."""
        return gl.inline_asm_elementwise(
            asm="mov.b32 $0, $1;", constraints="=r,r,r,r,r", args=[words], dtype=gl.float8e4nv, is_pure=True, pack=4
        )

    @gluon.jit
    def _decode_step(words, sb, shift2, BN: gl.constexpr, BK: gl.constexpr, L_W3: gl.constexpr,
                     L_T4: gl.constexpr, L_W4: gl.constexpr, L_A3: gl.constexpr, a_layout: gl.constexpr):  # fmt: skip
        """One k-step's A operand from its code words ``[BN, BK/8]`` (word 4c + t: k = 32c + 8t .. + 7)
        and scale bytes ``[BN, BK/16]`` (block 2c + h), in the layouts of :func:`_layouts`. Every
        ``convert_layout`` here is a relabeling (``assert_trivial``): no data moves between threads."""
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
        l_w3: gl.constexpr = gl.SliceLayout(2, L_W4)
        a_x = gl.broadcast(gl.expand_dims(gl.convert_layout(a_x, l_w3, assert_trivial=True), 2), zw)[0]
        a_y = gl.broadcast(gl.expand_dims(gl.convert_layout(a_y, l_w3, assert_trivial=True), 2), zw)[0]
        jl = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, L_W4))))
        a4 = gl.where(gl.expand_dims(gl.expand_dims(gl.expand_dims(jl, 0), 1), 3) == 1, a_y, a_x)
        a4 = gl.convert_layout(gl.reshape(a4, [BN, BK // 4]), gl.SliceLayout(2, L_A3), assert_trivial=True)
        a3 = gl.broadcast(gl.expand_dims(a4, 2), gl.zeros([BN, BK // 4, 4], gl.int32, L_A3))[0]
        return _as_e4m3(gl.convert_layout(gl.reshape(a3, [BN, BK]), a_layout, assert_trivial=True))

    @gluon.jit
    def _mma_partition(
        x_bufs, c_bufs, sc_bufs, x_ready, x_empty, c_ready, c_empty, xs_smem, xs_ready, shift_ptr, alpha_ptr, bias_ptr,
        y_desc, y_smem, N, off_n, off_t, num_k, HAS_BIAS: gl.constexpr, ALPHA_PER_ROW: gl.constexpr, BN: gl.constexpr,
        BT: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr, CSTAGES: gl.constexpr, L_W: gl.constexpr,
        L_S: gl.constexpr, L_W3: gl.constexpr, L_T4: gl.constexpr, L_W4: gl.constexpr, L_A3: gl.constexpr,
        num_warps: gl.constexpr,
    ):  # fmt: skip
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BT, 32]
        )
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=4)
        flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        rows = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, L_S))
        shift2 = _f16x2(gl.load(shift_ptr + rows, mask=rows < N, other=1.0))
        # the epilogue's per-row factors, loaded before the main loop
        n_idx = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, mma_layout))
        n_ok = n_idx < N
        if ALPHA_PER_ROW:
            alpha = gl.load(alpha_ptr + n_idx, mask=n_ok, other=0.0)
        else:
            alpha = gl.load(alpha_ptr)
        col = alpha / gl.load(shift_ptr + n_idx, mask=n_ok, other=1.0)
        if HAS_BIAS:
            bias = gl.load(bias_ptr + n_idx, mask=n_ok, other=0.0).to(gl.float32)
        acc = gl.zeros((BN, BT), dtype=gl.float32, layout=mma_layout)
        # without this LLVM keeps a zero-trip path whose zero accumulator joins the in-flight wgmma's
        # at the loop exit, and ptxas serializes every wgmma (C7515)
        gl.assume(num_k >= 2)
        for kk in range(0, num_k, 2):  # two k-steps per iteration: one scale box holds both
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
        mbarrier.wait(xs_ready, 0)  # the token scales, in shared memory (the code loader put them there)
        acc = acc * col[:, None] * xs_smem.load(gl.SliceLayout(0, mma_layout))[None, :]
        if HAS_BIAS:
            acc = acc + bias[:, None]
        # the y^T tile -> shared memory as [BT, BN] -> one TMA store (clipped at M and N)
        y_smem.store(gl.permute(acc.to(gl.bfloat16), (1, 0)))
        fence_async_shared()
        tma.async_copy_shared_to_global(y_desc, [off_t, off_n], y_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _swapab_kernel(
        x_desc, c_desc, sc_desc, shift_ptr, xs_ptr, alpha_ptr, bias_ptr, y_desc, M, N, K,
        HAS_BIAS: gl.constexpr, ALPHA_PER_ROW: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr,
        STAGES: gl.constexpr, CSTAGES: gl.constexpr, L_W: gl.constexpr, L_S: gl.constexpr, L_W3: gl.constexpr,
        L_T4: gl.constexpr, L_W4: gl.constexpr, L_A3: gl.constexpr, num_warps: gl.constexpr,
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
        xs_smem = gl.allocate_shared_memory(gl.float32, [BT], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        xs_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(xs_ready, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(x_ready.index(i), count=1)
            mbarrier.init(x_empty.index(i), count=1)
        for i in gl.static_range(CSTAGES):
            mbarrier.init(c_ready.index(i), count=1)
            mbarrier.init(c_empty.index(i), count=1)
        gl.warp_specialize(
            [
                (_mma_partition, (x_bufs, c_bufs, sc_bufs, x_ready, x_empty, c_ready, c_empty, xs_smem, xs_ready,
                                  shift_ptr, alpha_ptr, bias_ptr, y_desc, y_smem, N, off_n, off_t, num_k, HAS_BIAS,
                                  ALPHA_PER_ROW, BN, BT, BK, STAGES, CSTAGES, L_W, L_S, L_W3, L_T4, L_W4, L_A3,
                                  num_warps)),
                (_x_load_partition, (x_desc, x_bufs, x_ready, x_empty, off_t, num_k, BK, STAGES)),
                (_code_load_partition, (c_desc, sc_desc, c_bufs, sc_bufs, c_ready, c_empty, xs_ptr, xs_smem, xs_ready,
                                        M, off_n, off_t, num_k, BK, BT, CSTAGES)),
            ],
            [1, 1],
            [24, 24],
        )  # fmt: skip

    def _lin(reg: list, lane: list, warp: list, shape: list) -> gl.DistributedLinearLayout:
        return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=lane, warp_bases=warp, block_bases=[], shape=shape)

    @functools.cache
    def _layouts(bn: int, num_warps: int) -> dict:
        """The register layouts of one k-step (BK = 128) for ``num_warps`` warps along the weight rows
        (16 rows each; rows r and r + 8 in one thread, lane // 4 the row r, lane % 4 = c):

        * ``L_W`` code words ``[bn, 16]`` int32 (word 4c + t) and ``L_W3`` the same as
          ``[bn, 4 (t), 4 (c)]``;
        * ``L_S`` scale bytes ``[bn, 8]`` (block 2c + h);
        * ``L_T4`` ``[bn, 2 (h), 2 (tl), 4 (c)]``: a block's table broadcast to its code words t = 2h + tl;
        * ``L_W4`` ``[bn, 4 (t), 2 (jl), 4 (c)]``: the A registers q = c + 4j, j = 2t + jl;
        * ``L_A3``: wgmma's A layout as ``[bn, 32 (q), 4 (i)]``."""
        rows = [[1], [2], [4]]
        warp = [[16 << i] for i in range(num_warps.bit_length() - 1)]

        def nd(bases: list, dims: int) -> list:  # row-only bases padded with zeros for the other dims
            return [b + [0] * dims for b in bases]

        return {
            "L_W": _lin([[0, 1], [0, 2], [8, 0]], [[0, 4], [0, 8]] + nd(rows, 1), nd(warp, 1), [bn, 16]),
            "L_W3": _lin(
                [[8, 0, 0], [0, 1, 0], [0, 2, 0]], [[0, 0, 1], [0, 0, 2]] + nd(rows, 2), nd(warp, 2), [bn, 4, 4]
            ),
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


def _launch_swapab(
    q: torch.Tensor,
    xs: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    row_shift: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    m, k = q.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=torch.bfloat16, device=q.device)
    flat8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)
    x_desc = TensorDescriptor.from_tensor(q, [BT, BK], gl.NVMMASharedLayout.get_default_for([BT, BK], gl.float8e4nv))
    c_desc = TensorDescriptor.from_tensor(weight, [BN, BK // 2], flat8)
    sc_desc = TensorDescriptor.from_tensor(weight_scale.view(torch.uint8), [BN, 2 * (BK // 16)], flat8)
    y_desc = TensorDescriptor.from_tensor(y, [BT, BN], gl.NVMMASharedLayout.get_default_for([BT, BN], gl.bfloat16))
    alpha = alpha.to(torch.float32)
    num_warps = BN // 16
    grid = triton.cdiv(m, BT) * triton.cdiv(n, BN)
    stages, cstages = STAGES_ONE_ROUND if grid <= _sm_count(q.device) else STAGES_ROUNDS
    _swapab_kernel[(grid,)](
        x_desc, c_desc, sc_desc, row_shift, xs, alpha, bias, y_desc, m, n, k,
        HAS_BIAS=bias is not None, ALPHA_PER_ROW=alpha.dim() > 0, BN=BN, BT=BT, BK=BK, STAGES=stages,
        CSTAGES=cstages, **_layouts(BN, num_warps), num_warps=num_warps, launch_pdl=True,
    )  # fmt: skip
    return y


def _swapab_eager(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    row_shift: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    q, xs = quantize_act_fp8(x2d, wgmma_k_order=True, pdl=True)
    return _launch_swapab(q, xs, weight, weight_scale, row_shift, alpha, bias)


def _swapab_fake(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    row_shift: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return x2d.new_empty((x2d.shape[0], weight.shape[0]), dtype=torch.bfloat16)


_OP_NAMESPACE, _OP_NAME = "nvfp4_flux", "w4a8_swapab"
_libraries: list[torch.library.Library] = []  # a registration lives as long as its Library object


def _register() -> None:
    """``nvfp4_flux::w4a8_swapab``, once per process (this file may be imported under two names)."""
    if hasattr(getattr(torch.ops, _OP_NAMESPACE), _OP_NAME):
        return
    lib = torch.library.Library(_OP_NAMESPACE, "FRAGMENT")
    lib.define(
        f"{_OP_NAME}(Tensor x, Tensor weight, Tensor weight_scale, Tensor row_shift, Tensor alpha, Tensor? bias)"
        " -> Tensor"
    )
    lib.impl(_OP_NAME, _swapab_eager, "CUDA")
    torch.library.register_fake(f"{_OP_NAMESPACE}::{_OP_NAME}", _swapab_fake, lib=lib)
    _libraries.append(lib)


if HAS_GLUON:
    _register()


def w4a8_swapab_linear(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    row_shift: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """bf16 ``x2d @ dequant(weight)^T + bias`` ``[M, N]`` for a call :func:`swapab_supports` accepts;
    ``row_shift``: the weight's :func:`.weight_decode.fp8_row_shift`. While Inductor traces the op it
    is a call of the opaque op ``nvfp4_flux::w4a8_swapab``; eagerly, the two launches directly."""
    if is_tracing():
        return getattr(torch.ops, _OP_NAMESPACE).w4a8_swapab(x2d, weight, weight_scale, row_shift, alpha, bias)
    return _swapab_eager(x2d, weight, weight_scale, row_shift, alpha, bias)
