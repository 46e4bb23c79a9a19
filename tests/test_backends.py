"""Every fast backend against the reference backend, on random data.

On a GPU the Triton kernels run natively; without one they run under Triton's interpreter
on the CPU (set up in conftest), so CI checks the same kernel code.
"""

from __future__ import annotations

import pytest
import torch
from markers import HAS_CUDA

from kernels import fp4_linear, nvfp4_dequantize, nvfp4_quantize
from kernels.dispatch import choose_backend
from kernels.triton_support import HAS_TRITON

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def _cpu_run_unsupported() -> str:
    """Why this environment cannot run the Triton kernels on the CPU ('' if it can)."""
    if HAS_CUDA:
        return ""
    import numpy

    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 4):
        return f"Triton 3.6's CPU interpreter breaks on numpy {numpy.__version__} (needs < 2.4)"
    try:
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return f"torch {torch.__version__} has no row-wise _scaled_mm on the CPU (2.13 has)"
    return ""


pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed"),
    pytest.mark.skipif(bool(_cpu_run_unsupported()), reason=_cpu_run_unsupported() or "-"),
]

# Relative error bounds against the float64 product of the dequantized weights and the activations.
# W4A16: decoded weights are exact in bf16/fp16; what remains is output rounding (~2^-9).
# W4A8 / fp8-resident: per-token e4m3 activations and e4m3 weights (4 significant bits each);
# ~3.6% measured at FLUX-like K (NVFP4_FORMATS.md reports 3.4% for the same scheme). With the
# tiny K of the odd-shape tests a dot product has few terms and the ratio is noisier (up to ~8%
# seen), so those get a looser bound; the FLUX-shape test below holds W4A8 to 5%.
# W4A4 (native Blackwell path; off Blackwell its float32 emulation runs): activations rounded to
# NVFP4 (2 significant bits) dominate: median 8.7-9.4% over 150 seeds on the odd shapes, up to 14%
# at M=1, K=48 (3 blocks); 9.1-9.4% at K=3072 (the FLUX-shape test holds it to 10%).
BOUND = {"reference": 1e-2, "w4a16": 1e-2, "w4a8": 0.12, "fp8_resident": 0.12, "w4a4": 0.16}
W4A4_FLUX_SHAPE_BOUND = 0.10
FLUX_SHAPE_BOUND = 0.05

ODD_SHAPES = [  # (M, K, N): K not a multiple of the K-tile, N not a multiple of 128, tiny M
    (1, 48, 96),
    (3, 144, 200),
    (7, 80, 130),
    (5, 272, 1000),
    (65, 176, 112),
    (130, 64, 48),
]


def quantized_layer(n: int, k: int, gen: torch.Generator, per_channel: bool = False):
    w = torch.randn(n, k, generator=gen) * 0.05
    packed, scale, gs = nvfp4_quantize(w)
    if per_channel:  # a fused layer whose parts had different global scales
        gs = gs * torch.exp2(torch.randint(-3, 4, (n,), generator=gen).float())
    return packed.to(DEVICE), scale.to(DEVICE), gs.to(DEVICE)


def float64_reference(x, packed, scale, gs, bias):
    w = nvfp4_dequantize(packed.cpu(), scale.cpu(), gs.cpu(), dtype=torch.float64)
    y = x.cpu().double() @ w.T
    return y if bias is None else y + bias.cpu().double()


def poison_allocator() -> None:
    """Fill freed device memory with NaN so an unwritten output element shows up as NaN."""
    if DEVICE.type == "cuda":
        torch.empty(64 << 20, dtype=torch.float32, device=DEVICE).fill_(float("nan"))


def run_backend(backend, x, packed, scale, gs, bias):
    if backend == "fp8_resident":
        from kernels.backends.w4a8 import make_fp8_resident

        w8, col_scale = make_fp8_resident(packed, scale, gs)
        return fp4_linear(x, w8, scale.new_empty(0), col_scale, bias, "fp8_resident")
    return fp4_linear(x, packed, scale, gs, bias, backend)


def rel_err(y, ref):
    return ((y.cpu().double() - ref).norm() / ref.norm()).item()


@pytest.fixture
def force_fp8_gemm(monkeypatch):
    """Make W4A8 take its decode + FP8 GEMM path at every M (not W4A16 for small M)."""
    import kernels.backends.w4a8 as w4a8

    monkeypatch.setattr(w4a8, "W4A8_SMALL_M", 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["w4a16", "w4a8", "fp8_resident", "w4a4"])
def test_backend_matches_float64_reference(backend, shape, bias, dtype, gen, force_fp8_gemm):
    m, k, n = shape
    packed, scale, gs = quantized_layer(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(dtype).to(DEVICE)
    b = (torch.randn(n, generator=gen) * 0.1).to(dtype).to(DEVICE) if bias else None
    poison_allocator()
    y = run_backend(backend, x, packed, scale, gs, b)
    assert y.shape == (m, n) and y.dtype == dtype and y.device.type == DEVICE.type
    assert not torch.isnan(y).any(), "unwritten or NaN output"
    assert rel_err(y, float64_reference(x, packed, scale, gs, b)) < BOUND[backend]


@pytest.mark.parametrize("backend", ["w4a16", "w4a8", "fp8_resident", "w4a4"])
def test_backend_per_channel_alpha_and_leading_dims(backend, gen, force_fp8_gemm):
    dtype = torch.bfloat16
    packed, scale, gs = quantized_layer(144, 96, gen, per_channel=True)
    x = torch.randn(2, 3, 96, generator=gen).to(dtype).to(DEVICE)
    y = run_backend(backend, x, packed, scale, gs, None)
    assert y.shape == (2, 3, 144)
    ref = float64_reference(x.reshape(6, 96), packed, scale, gs, None).reshape(2, 3, 144)
    assert rel_err(y, ref) < BOUND[backend]


@pytest.mark.parametrize("backend", ["w4a8", "fp8_resident"])
def test_fp8_backends_error_at_flux_like_shape(backend, gen, force_fp8_gemm):
    m, k, n = (256, 3072, 512) if DEVICE.type == "cuda" else (32, 3072, 64)
    dtype = torch.bfloat16
    packed, scale, gs = quantized_layer(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(dtype).to(DEVICE)
    y = run_backend(backend, x, packed, scale, gs, None)
    err = rel_err(y, float64_reference(x, packed, scale, gs, None))
    assert not torch.isnan(y).any()
    assert err < FLUX_SHAPE_BOUND, f"{backend}: relative error {err:.4f}"


def test_w4a4_error_at_flux_like_shape(gen):
    m, k, n = (256, 3072, 512) if DEVICE.type == "cuda" else (32, 3072, 64)
    packed, scale, gs = quantized_layer(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(DEVICE)
    y = run_backend("w4a4", x, packed, scale, gs, None)
    err = rel_err(y, float64_reference(x, packed, scale, gs, None))
    assert not torch.isnan(y).any()
    assert err < W4A4_FLUX_SHAPE_BOUND, f"w4a4: relative error {err:.4f}"


def test_w4a8_single_row_uses_the_w4a16_gemv(gen):
    from kernels.backends.w4a8 import W4A8_SMALL_M

    packed, scale, gs = quantized_layer(96, 64, gen)
    x = torch.randn(W4A8_SMALL_M, 64, generator=gen).to(torch.float16).to(DEVICE)
    assert torch.equal(fp4_linear(x, packed, scale, gs, None, "w4a8"), fp4_linear(x, packed, scale, gs, None, "w4a16"))


def _fp8_gemv_output(hw_cvt: bool, x, w8, col_scale, bias, monkeypatch) -> torch.Tensor:
    import kernels.backends.fp8_gemv as fp8_gemv

    monkeypatch.setattr(fp8_gemv, "hardware_e4m3_convert", lambda device: hw_cvt, raising=True)
    monkeypatch.setattr("kernels.autotune._cache", {})
    return fp4_linear(x, w8, col_scale.new_empty(0), col_scale, bias, "fp8_resident")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_fp8_resident_single_row_gemv_matches_float64_of_its_fp8_weights(bias, dtype, gen, monkeypatch):
    """fp8_resident at M = 1 runs a GEMV over the resident e4m3 weights with unquantized
    activations: it matches the float64 product of those very weights to the output's rounding
    (ragged K: 68 words; N = 200 not a multiple of any BLOCK_N; poisoned output), with the
    portable decode (pre-sm_89 GPUs, the CPU interpreter) and, on sm_89+, the hardware one."""
    from kernels.backends.w4a8 import W4A8_SMALL_M, make_fp8_resident

    assert W4A8_SMALL_M >= 1
    packed, scale, gs = quantized_layer(200, 272, gen, per_channel=True)
    w8, col_scale = make_fp8_resident(packed, scale, gs)
    x = torch.randn(1, 272, generator=gen).to(dtype).to(DEVICE)
    b = (torch.randn(200, generator=gen) * 0.1).to(dtype).to(DEVICE) if bias else None
    ref = x.cpu().double() @ (w8.cpu().double() * col_scale.cpu().double().unsqueeze(1)).T
    ref = ref if b is None else ref + b.cpu().double()
    hw = [False] + ([True] if HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9) else [])
    outputs = []
    for hw_cvt in hw:
        poison_allocator()
        y = _fp8_gemv_output(hw_cvt, x, w8, col_scale, b, monkeypatch)
        assert y.shape == (1, 200) and y.dtype == dtype and torch.isfinite(y).all(), "unwritten or NaN output"
        assert rel_err(y, ref) < 2**-8
        outputs.append(y)
    assert all(torch.equal(o, outputs[0]) for o in outputs), "hardware and portable decode differ"
    # the same row on the FP8 GEMM path (activations quantized to e4m3) agrees to that path's bound
    monkeypatch.setattr("kernels.backends.w4a8.W4A8_SMALL_M", 0)
    assert rel_err(run_backend("fp8_resident", x, packed, scale, gs, b), ref) < BOUND["fp8_resident"]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="cuBLAS's own FP8 kernel choice: needs a GPU")
@pytest.mark.parametrize("backend", ["w4a8", "fp8_resident"])
def test_fp8_gemm_few_rows_at_large_k_with_bias(backend, gen, force_fp8_gemm):
    """FLUX's mlp.2 (K = 12288 -> 3072) on a few text tokens: cuBLAS has no fast-accumulation FP8
    row-wise kernel with a bias epilogue for M = 2..33 there, so the bias must go around it."""
    packed, scale, gs = quantized_layer(3072, 12288, gen)
    b = (torch.randn(3072, generator=gen) * 0.1).to(torch.bfloat16).to(DEVICE)
    for m in (2, 8, 33, 63, 64, 65):
        x = torch.randn(m, 12288, generator=gen).to(torch.bfloat16).to(DEVICE)
        y = run_backend(backend, x, packed, scale, gs, b)
        assert rel_err(y, float64_reference(x, packed, scale, gs, b)) < FLUX_SHAPE_BOUND, m


def test_w4a8_falls_back_for_shapes_cublas_fp8_cannot_take(gen, force_fp8_gemm):
    packed, scale, gs = quantized_layer(100, 64, gen)  # N = 100 is not a multiple of 16
    x = torch.randn(80, 64, generator=gen).to(torch.float16).to(DEVICE)
    y = fp4_linear(x, packed, scale, gs, None, "w4a8")
    assert rel_err(y, float64_reference(x, packed, scale, gs, None)) < BOUND["w4a16"]


def test_float32_activations_fall_back_to_reference(gen):
    packed, scale, gs = quantized_layer(32, 64, gen)
    x = torch.randn(4, 64, generator=gen).to(DEVICE)
    assert torch.equal(fp4_linear(x, packed, scale, gs, None, "w4a16"), fp4_linear(x, packed, scale, gs, None))


def test_fp8_decode_keeps_every_row_inside_e4m3(gen):
    from kernels.backends.weight_decode import decode_nvfp4_to_fp8

    # rows spanning 4 decades (inside what e4m3 block scales can express under one global scale)
    w = torch.randn(64, 256, generator=gen) * torch.logspace(-3, 1, 64).unsqueeze(1)
    packed, scale, gs = (t.to(DEVICE) for t in nvfp4_quantize(w))
    w8, col_scale = decode_nvfp4_to_fp8(packed, scale, gs)
    row_max = w8.float().abs().amax(dim=1)
    # the row's largest |code| x scale is 4 or 6 times its largest block scale, shifted into (224, 448]
    assert (row_max <= 448).all() and (row_max > 224 * 4 / 6).all(), "row shift must use e4m3's top binade"
    exact = nvfp4_dequantize(packed.cpu(), scale.cpu(), gs.cpu(), dtype=torch.float64)
    decoded = w8.cpu().double() * col_scale.cpu().double().unsqueeze(1)
    nonzero = exact != 0
    per_element = ((decoded - exact).abs()[nonzero] / exact.abs()[nonzero]).max().item()
    # code x scale has at most 5 significant bits; e4m3 keeps 4: the worst case is a mantissa of
    # 1.3125 (= 21/16, a tie) rounding to 1.25, a relative error of 1/21
    assert per_element <= 1 / 21 + 1e-6  # + float32 rounding of scale x global scale in the reference
    assert torch.equal(decoded == 0, exact == 0), "no value may underflow to zero"


def test_auto_backend_for_this_device():
    choice = choose_backend(DEVICE)
    if DEVICE.type == "cpu":
        assert choice.name == "reference"
    else:
        cap = torch.cuda.get_device_capability()
        expected = "w4a8" if cap >= (8, 9) else "w4a16" if cap >= (8, 0) else "reference"
        if cap >= (10, 0):  # Blackwell: native W4A4 where its first-use check passes
            from kernels.backends.w4a4 import native_w4a4_check

            expected = "w4a4" if native_w4a4_check(DEVICE)[0] else "w4a8"
        assert choice.name == expected, choice


def test_native_w4a4_is_checked_before_it_is_chosen():
    """Off Blackwell (the CPU, the H100) the native FP4 GEMM is unavailable: the check says why,
    a forced ``w4a4`` is refused with that reason, and ``auto`` does not pick it."""
    from kernels.backends.w4a4 import native_w4a4_check

    ok, why = native_w4a4_check(DEVICE)
    assert not ok and ("CUDA GPU" in why or "no native NVFP4 GEMM" in why), why
    with pytest.raises(ValueError, match="w4a4"):
        choose_backend(DEVICE, "w4a4")
    assert choose_backend(DEVICE).name != "w4a4"


def test_requested_backend_that_cannot_run_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        choose_backend("cpu", "w4a8")
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend("cpu", "w4a3")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (compiles the GPU backends)")
@pytest.mark.parametrize("backend", ["w4a8", "w4a16"])
def test_compiled_gpu_backend_has_no_graph_break(backend, gen):
    from torch import nn

    from kernels import FP4Linear

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    block = nn.Sequential(
        FP4Linear.from_linear(nn.Linear(256, 512)), nn.GELU(), FP4Linear.from_linear(nn.Linear(512, 256))
    ).to(DEVICE, torch.bfloat16)
    for m in block:
        if isinstance(m, FP4Linear):
            m.backend = backend
    x = torch.randn(300, 256, generator=gen).to(DEVICE, torch.bfloat16)
    eager = block(x)
    compiled = torch.compile(block, fullgraph=True)
    y = compiled(x)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    assert rel_err(y, eager.double().cpu()) < 1e-2


def test_fp8_row_shift_is_exact_ceil_log2(gen):
    import math

    from kernels.backends.weight_decode import fp8_row_shift

    scales = (torch.rand(256, 40, generator=gen) * 448).clamp_min(2**-9).to(torch.float8_e4m3fn)
    down = fp8_row_shift(scales)
    for n in range(256):
        smax = max(scales[n].float().max().item(), 2**-9)
        r = torch.tensor(smax, dtype=torch.float32) * torch.tensor(6.0 / 448.0, dtype=torch.float32)
        assert down[n].item() == 2.0 ** -math.ceil(math.log2(r.item()))


@pytest.mark.parametrize("backend", ["w4a8", "fp8_resident", "w4a16", "reference"])
def test_prepared_module_matches_reference(backend, gen, force_fp8_gemm):
    from torch import nn

    from kernels import FP4Linear

    dense = nn.Linear(256, 96)
    ref_module = FP4Linear.from_linear(dense).to(DEVICE, torch.bfloat16)
    module = FP4Linear.from_linear(dense).to(DEVICE, torch.bfloat16).prepare(backend)
    assert module.backend == backend
    if backend == "w4a8":
        assert module.aux is not None and module.aux.dtype == torch.float32
        module.to(torch.float16).to(torch.bfloat16)
        assert module.aux.dtype == torch.float32, ".to(dtype) must not cast the prepared data"
    x = torch.randn(80, 256, generator=gen).to(DEVICE, torch.bfloat16)
    ref = float64_reference(x, ref_module.weight, ref_module.weight_scale, ref_module.weight_scale_2, ref_module.bias)
    assert rel_err(module(x), ref) < BOUND[backend]


def _gemv_output(hw_cvt: bool, x, packed, scale, gs, bias, monkeypatch) -> torch.Tensor:
    import kernels.backends.w4a16 as w4a16

    monkeypatch.setattr(w4a16, "hardware_e4m3_convert", lambda device: hw_cvt, raising=True)
    monkeypatch.setattr("kernels.autotune._cache", {})
    return fp4_linear(x, packed, scale, gs, bias, "w4a16")


@pytest.mark.parametrize("m", [1, 4])
def test_gemv_arithmetic_decode_matches_float64(m, gen, monkeypatch):
    """The GEMV's portable decode (pre-sm_89 GPUs and the CPU interpreter), on a ragged K
    (34 words, 17 scale blocks) and N (200)."""
    packed, scale, gs = quantized_layer(200, 272, gen)
    x = torch.randn(m, 272, generator=gen).to(torch.bfloat16).to(DEVICE)
    bias = torch.randn(200, generator=gen).to(torch.bfloat16).to(DEVICE)
    y = _gemv_output(False, x, packed, scale, gs, bias, monkeypatch)
    assert rel_err(y, float64_reference(x, packed, scale, gs, bias)) < BOUND["w4a16"]


@pytest.mark.skipif(
    not (HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)), reason="needs an sm_89+ GPU (cvt e4m3x2)"
)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_hardware_decode_equals_the_arithmetic_one(m, gen, monkeypatch):
    """Both decodes give the same float32 values, so the same output bits; poisoned output."""
    packed, scale, gs = quantized_layer(1000, 528, gen)
    x = torch.randn(m, 528, generator=gen).to(torch.bfloat16).to(DEVICE)
    outputs = []
    for hw_cvt in (True, False):
        poison_allocator()
        y = _gemv_output(hw_cvt, x, packed, scale, gs, None, monkeypatch)
        assert torch.isfinite(y).all(), "unwritten or NaN output"
        outputs.append(y)
    assert torch.equal(outputs[0], outputs[1])
    assert rel_err(outputs[0], float64_reference(x, packed, scale, gs, None)) < BOUND["w4a16"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_dense_decode_equals_nvfp4_dequantize_byte_for_byte(dtype, gen):
    from kernels.backends.weight_decode import decode_nvfp4_dense

    w = torch.randn(96, 272, generator=gen) * torch.logspace(-2, 1, 96).unsqueeze(1)
    packed, scale, gs = nvfp4_quantize(w)
    for alpha in (gs, gs * torch.exp2(torch.randint(-2, 3, (96,), generator=gen).float())):
        out = torch.full((96 * 272 + 5,), float("nan"), dtype=dtype, device=DEVICE)  # a larger flat scratch
        dense = decode_nvfp4_dense(packed.to(DEVICE), scale.to(DEVICE), alpha.to(DEVICE), out)
        expected = nvfp4_dequantize(packed, scale, alpha, dtype=dtype)
        assert dense.shape == (96, 272) and torch.equal(dense.cpu(), expected)


@pytest.fixture
def w4a16_path(request, monkeypatch):
    """Force the W4A16 GEMM path for M > GEMV_MAX_M: "fused" (decode in the GEMM's registers) or
    "decode_then_cublas" (decode into the scratch, cuBLAS), with an empty tuning cache."""
    import kernels.backends.w4a16 as w4a16

    monkeypatch.setattr(w4a16, "FUSED_DEFAULT_MAX_M", 1 << 30 if request.param == "fused" else 0)
    monkeypatch.setattr("kernels.autotune._cache", {})
    return request.param


@pytest.mark.parametrize("w4a16_path", ["fused", "decode_then_cublas"], indirect=True)
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar_alpha", "per_channel_alpha"])
@pytest.mark.parametrize("shape", [(7, 80, 130), (65, 176, 112), (130, 64, 48)], ids=str)
def test_w4a16_gemm_paths_match_float64(w4a16_path, shape, per_channel, gen):
    m, k, n = shape
    packed, scale, gs = quantized_layer(n, k, gen, per_channel=per_channel)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(DEVICE)
    b = (torch.randn(n, generator=gen) * 0.1).to(torch.bfloat16).to(DEVICE)
    poison_allocator()
    y = fp4_linear(x, packed, scale, gs, b, "w4a16")
    assert not torch.isnan(y).any()
    assert rel_err(y, float64_reference(x, packed, scale, gs, b)) < BOUND["w4a16"]


@pytest.mark.parametrize("w4a16_path", ["decode_then_cublas"], indirect=True)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_w4a16_decode_path_equals_the_reference_backend(w4a16_path, bias, gen):
    """Same decoded bytes, same cuBLAS call: the large-M W4A16 path is the reference, faster."""
    packed, scale, gs = quantized_layer(144, 256, gen, per_channel=True)
    x = torch.randn(96, 256, generator=gen).to(torch.bfloat16).to(DEVICE)
    b = (torch.randn(144, generator=gen) * 0.1).to(torch.bfloat16).to(DEVICE) if bias else None
    assert torch.equal(fp4_linear(x, packed, scale, gs, b, "w4a16"), fp4_linear(x, packed, scale, gs, b, "reference"))


def test_torch_decode_matches_the_kernel_byte_for_byte(gen):
    """fp8_resident prepared on the CPU at load (torch ops) equals the Triton decode."""
    from kernels.backends.weight_decode import decode_nvfp4_to_fp8, decode_nvfp4_to_fp8_torch, fp8_row_shift

    w = torch.randn(96, 272, generator=gen) * torch.logspace(-2, 1, 96).unsqueeze(1)
    packed, scale, gs = nvfp4_quantize(w)
    alpha = gs * torch.exp2(torch.randint(-2, 3, (96,), generator=gen).float())
    shift = fp8_row_shift(scale)
    w8_t, col_t = decode_nvfp4_to_fp8_torch(packed, scale, alpha, shift)
    w8_k, col_k = decode_nvfp4_to_fp8(packed.to(DEVICE), scale.to(DEVICE), alpha.to(DEVICE), row_shift=shift.to(DEVICE))
    assert torch.equal(w8_t.view(torch.uint8), w8_k.cpu().view(torch.uint8))
    assert torch.equal(col_t, col_k.cpu())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the load-time decode moves to it)")
def test_fp8_resident_load_decodes_cpu_tensors_on_the_gpu(gen, monkeypatch):
    """A CPU state dict made fp8_resident goes through the GPU kernel and comes back to the CPU
    with the CPU torch path's bytes."""
    from kernels.backends import weight_decode
    from kernels.backends.w4a8 import make_fp8_resident

    packed, scale, gs = nvfp4_quantize(torch.randn(96, 272, generator=gen))
    torch_path = weight_decode.decode_nvfp4_to_fp8_torch
    calls: list[str] = []
    monkeypatch.setattr(
        weight_decode, "decode_nvfp4_to_fp8_torch", lambda *a, **k: calls.append("cpu") or torch_path(*a, **k)
    )
    w8, col = make_fp8_resident(packed, scale, gs)
    assert not calls and w8.device.type == "cpu" and col.device.type == "cpu"
    w8_t, col_t = torch_path(packed, scale, gs, weight_decode.fp8_row_shift(scale))
    assert torch.equal(w8.view(torch.uint8), w8_t.view(torch.uint8)) and torch.equal(col, col_t)


def test_fp8_decode_every_scale_byte_and_code(gen):
    """Every finite block-scale byte with every code byte, rows whose largest scale (so row
    shift) ranges over the e4m3 scales, a poisoned output: the kernel (on sm_89+ its fp16-pair
    hardware path) writes every byte and each equals the float32 torch decode's."""
    from kernels.backends.weight_decode import decode_nvfp4_to_fp8, decode_nvfp4_to_fp8_torch, fp8_row_shift

    n, k = 127, 2048
    top = torch.arange(n, dtype=torch.int64).unsqueeze(1)  # row r uses scale bytes 0..r
    scale_bytes = (torch.arange(k // 16, dtype=torch.int64).unsqueeze(0) * 37 + top) % (top + 1)
    scale = scale_bytes.to(torch.uint8).view(torch.float8_e4m3fn)
    packed = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    packed[:, :256] = torch.arange(256, dtype=torch.uint8)  # every code pair in every row
    alpha = torch.rand(n, generator=gen) + 0.5
    shift = fp8_row_shift(scale)
    w8_t, col_t = decode_nvfp4_to_fp8_torch(packed, scale, alpha, shift)
    out = torch.full((n, k), 0x7F, dtype=torch.uint8, device=DEVICE).view(torch.float8_e4m3fn)  # NaN
    w8_k, col_k = decode_nvfp4_to_fp8(packed.to(DEVICE), scale.to(DEVICE), alpha.to(DEVICE), out, shift.to(DEVICE))
    assert torch.equal(w8_t.view(torch.uint8), w8_k.cpu().view(torch.uint8))
    assert torch.equal(col_t, col_k.cpu())


# ----------------------------------------------------------------------------- LoRA branch


def lora_factors(n: int, k: int, rank: int, gen: torch.Generator, effect: float = 0.3):
    """float32 ``(down [rank, K], up [N, rank])`` whose branch is about ``effect`` times the size of
    the base output of :func:`quantized_layer`'s weights on N(0, 1) activations."""
    down = torch.randn(rank, k, generator=gen) / k**0.5
    up = torch.randn(n, rank, generator=gen) * (effect * 0.05 * k**0.5 / rank**0.5)
    return down, up


def run_backend_with_lora(backend, x, packed, scale, gs, bias, down, up):
    from kernels.backends.w4a8 import make_fp8_resident
    from kernels.backends.weight_decode import fp8_row_shift
    from kernels.fp4_linear import prepare_lora

    if backend == "fp8_resident":
        (w, a), s, aux = make_fp8_resident(packed, scale, gs), scale.new_empty(0), None
    else:
        w, s, a, aux = packed, scale, gs, fp8_row_shift(scale) if backend == "w4a8" else None
    lora = prepare_lora(backend, w, s, a, aux, down.to(DEVICE), up.to(DEVICE), x.dtype)
    return fp4_linear(x, w, s, a, bias, backend, aux, lora), lora


def float64_with_lora(x, packed, scale, gs, bias, down, up):
    xd = x.cpu().double()
    return float64_reference(x, packed, scale, gs, bias) + (xd @ down.double().T) @ up.double().T


ALL_BACKENDS = ["reference", "w4a16", "w4a8", "fp8_resident", "w4a4"]


@pytest.mark.parametrize("rank", [5, 32])
@pytest.mark.parametrize("shape", [(3, 144, 200), (65, 176, 112), (130, 64, 48)], ids=str)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_lora_branch_matches_float64(backend, shape, rank, gen, force_fp8_gemm):
    m, k, n = shape
    packed, scale, gs = quantized_layer(n, k, gen)
    down, up = lora_factors(n, k, rank, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(DEVICE)
    b = (torch.randn(n, generator=gen) * 0.1).to(torch.bfloat16).to(DEVICE)
    poison_allocator()
    y, lora = run_backend_with_lora(backend, x, packed, scale, gs, b, down, up)
    assert y.shape == (m, n) and not torch.isnan(y).any()
    ref = float64_with_lora(x, packed, scale, gs, b, down, up)
    assert rel_err(y, ref) < BOUND[backend]
    base = float64_reference(x, packed, scale, gs, b)
    assert (ref - base).norm() > 0.1 * ref.norm(), "the test LoRA must matter"
    if backend in ("w4a8", "fp8_resident"):  # B rides in the FP8 GEMM: e4m3, K + rank padded to 128
        padded = lora[0].shape[0]
        assert lora[1].dtype == torch.float8_e4m3fn and (k + padded) % 128 == 0 and rank <= padded < rank + 128


@pytest.mark.parametrize("backend", ["w4a8", "fp8_resident"])
def test_fp8_lora_error_at_flux_like_shape(backend, gen, force_fp8_gemm):
    """The branch in the FP8 GEMM adds little error: same bound as the layer without LoRA."""
    m, k, n = (256, 3072, 512) if DEVICE.type == "cuda" else (32, 3072, 64)
    packed, scale, gs = quantized_layer(n, k, gen)
    down, up = lora_factors(n, k, 32, gen, effect=0.5)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(DEVICE)
    y, _ = run_backend_with_lora(backend, x, packed, scale, gs, None, down, up)
    err = rel_err(y, float64_with_lora(x, packed, scale, gs, None, down, up))
    assert not torch.isnan(y).any()
    assert err < FLUX_SHAPE_BOUND, f"{backend} + LoRA: relative error {err:.4f}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_lora_equals_no_lora(backend, gen, force_fp8_gemm):
    """Strength 0 keeps the branch (no recompile) but changes nothing."""
    packed, scale, gs = quantized_layer(96, 128, gen)
    down, up = lora_factors(96, 128, 8, gen)
    x = torch.randn(40, 128, generator=gen).to(torch.bfloat16).to(DEVICE)
    y0, _ = run_backend_with_lora(backend, x, packed, scale, gs, None, down, up * 0)
    plain = run_backend(backend, x, packed, scale, gs, None)
    assert torch.allclose(y0.float(), plain.float(), rtol=1e-2, atol=1e-3 * plain.abs().max().item())


@pytest.mark.parametrize("backend", ["w4a8", "fp8_resident"])
@pytest.mark.parametrize("m", [1, 40])
def test_fp8_lora_on_the_small_m_and_plain_paths(backend, m, gen):
    """At M = 1 (a GEMV + the branch added after: W4A16's for W4A8, the FP8-weight one for
    fp8_resident) and on a layer with an all-zero column scale (plain-form fallback) the FP8
    backends still match float64."""
    packed, scale, gs = quantized_layer(96, 128, gen)
    down, up = lora_factors(96, 128, 8, gen)
    x = torch.randn(m, 128, generator=gen).to(torch.bfloat16).to(DEVICE)
    y, _ = run_backend_with_lora(backend, x, packed, scale, gs, None, down, up)
    assert rel_err(y, float64_with_lora(x, packed, scale, gs, None, down, up)) < BOUND[backend]
    zero_alpha = gs * 0
    y, lora = run_backend_with_lora(backend, x, packed, scale, zero_alpha, None, down, up)
    assert lora[1].dtype == torch.bfloat16, "a zero column scale cannot carry B: plain form"
    ref = float64_with_lora(x, packed, scale, zero_alpha, None, down, up)
    assert rel_err(y, ref) < 1e-2


def test_wgmma_k_order_is_a_column_permutation_of_the_plain_quantization(gen):
    """The activation order of the swap-AB GEMM (kernels/backends/w4a8_swapab.py): column k = 32c + 4j + i
    of each 128-wide chunk at position 4c + i + 16j, the same codes and row scales."""
    from kernels.backends.fp8_act_quant import quantize_act_fp8

    x = torch.randn(5, 512, generator=gen).to(torch.bfloat16).to(DEVICE)
    q, s = quantize_act_fp8(x)
    qp, sp = quantize_act_fp8(x, wgmma_k_order=True)
    k = torch.arange(512)
    c, j, i = (k % 128) // 32, (k % 32) // 4, k % 4
    pos = (k // 128) * 128 + 4 * c + i + 16 * j
    assert torch.equal(sp, s)
    assert torch.equal(qp[:, pos.to(qp.device)].view(torch.uint8), q.view(torch.uint8))
    with pytest.raises(ValueError, match="multiple of 128"):
        quantize_act_fp8(x[:, :200], wgmma_k_order=True)
