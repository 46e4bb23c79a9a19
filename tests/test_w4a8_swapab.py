"""The fused swap-AB W4A8 GEMM (kernels/backends/w4a8_swapab.py) that W4A8 uses for 256..1024 rows
on sm_90 (it is correct from 2 rows up): it must be taken where it claims to be, agree with the
decode + cuBLAS FP8 path it replaces (the same e4m3 weights and activations, only the fp32
summation order differs), and write every output element."""

from __future__ import annotations

import pytest
import torch
from markers import HAS_CUDA

from kernels import fp4_linear, nvfp4_dequantize, nvfp4_quantize


def _skip_reason() -> str:
    if not HAS_CUDA:
        return "needs a CUDA GPU (none visible to torch)"
    from kernels.backends import w4a8_swapab

    if not w4a8_swapab.HAS_GLUON:
        return "this Triton has no Gluon (the swap-AB kernel needs Triton >= 3.6)"
    if torch.cuda.get_device_capability() != (9, 0):
        major, minor = torch.cuda.get_device_capability()
        return f"the swap-AB kernel needs sm_90 (wgmma); this GPU is sm_{major}{minor}"
    return ""


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-")

SHAPES = [  # (M, K, N): M from 2 up, partial token and weight-row tiles, the smallest K (two k-steps)
    (2, 256, 8),  # N not a multiple of 16: cuBLAS FP8 cannot take it (W4A16 did)
    (7, 512, 200),
    (77, 768, 144),
    (300, 256, 528),
    (512, 3072, 1024),
    (1024, 1024, 264),
]


@pytest.fixture
def swapab_calls(monkeypatch):
    """Counts the swap-AB kernel's launches."""
    from kernels.backends import w4a8_swapab

    calls = []
    monkeypatch.setattr(w4a8_swapab, "SWAPAB_MIN_M", 2)  # correct from 2 rows; W4A8 takes it from 256
    launch = w4a8_swapab._launch_swapab

    def counted(*args):
        calls.append(args[0].shape)
        return launch(*args)

    monkeypatch.setattr(w4a8_swapab, "_launch_swapab", counted)
    return calls


def _layer(n: int, k: int, gen: torch.Generator, per_channel: bool):
    w = torch.randn(n, k, generator=gen) * 0.05
    packed, scale, gs = nvfp4_quantize(w)
    if per_channel:  # a fused layer whose parts had different global scales
        gs = gs * torch.exp2(torch.randint(-3, 4, (n,), generator=gen).float())
    return packed.cuda(), scale.cuda(), gs.cuda()


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


@pytest.mark.parametrize("per_channel", [False, True], ids=["alpha", "alpha_per_row"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_swapab_matches_float64_and_the_decode_path(shape, bias, per_channel, gen, swapab_calls, monkeypatch):
    import kernels.backends.w4a8 as w4a8

    m, k, n = shape
    packed, scale, gs = _layer(n, k, gen, per_channel)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    b = (torch.randn(n, generator=gen) * 0.1).to(torch.bfloat16).cuda() if bias else None
    torch.empty(64 << 20, dtype=torch.float32, device="cuda").fill_(float("nan"))  # poison freed memory
    y = fp4_linear(x, packed, scale, gs, b, "w4a8")
    assert swapab_calls == [(m, k)], "the swap-AB kernel was not the path taken"
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert not torch.isnan(y).any(), "unwritten or NaN output"
    ref = x.double().cpu() @ nvfp4_dequantize(packed.cpu(), scale.cpu(), gs.cpu(), dtype=torch.float64).T
    if b is not None:
        ref = ref + b.double().cpu()
    # e4m3 activations and weights (4 significant bits each): ~3.4% at K = 3072, noisier at tiny K
    assert _rel(y, ref) < (0.05 if k >= 3072 else 0.12)
    if n % 16 == 0:  # the decode + cuBLAS FP8 path exists for this shape
        monkeypatch.setattr(w4a8, "swapab_supports", lambda *a: False)
        y_decode = fp4_linear(x, packed, scale, gs, b, "w4a8")
        assert len(swapab_calls) == 1
        # the same e4m3 operands: what differs is fp32 summation order and the bf16 rounding of y
        assert _rel(y, y_decode) < 4e-3


def test_swapab_is_not_taken_where_it_cannot_run(gen, swapab_calls):
    """Rows outside 2..1024 (the fixture's range), K not a multiple of 256, N not a multiple of 8,
    fp16 activations or a LoRA branch: the decode + cuBLAS path (or the GEMV) answers instead."""
    from kernels.fp4_linear import prepare_lora

    cases = [(1, 512, 64, torch.bfloat16), (1100, 256, 64, torch.bfloat16), (8, 384, 64, torch.bfloat16),
             (8, 256, 100, torch.bfloat16), (8, 256, 64, torch.float16)]  # fmt: skip
    for m, k, n, dtype in cases:
        packed, scale, gs = _layer(n, k, gen, False)
        x = torch.randn(m, k, generator=gen).to(dtype).cuda()
        assert fp4_linear(x, packed, scale, gs, None, "w4a8").shape == (m, n)
    packed, scale, gs = _layer(64, 256, gen, False)
    lora = prepare_lora("w4a8", packed, scale, gs, None, torch.randn(4, 256).cuda(), torch.randn(64, 4).cuda(),
                        torch.bfloat16)  # fmt: skip
    fp4_linear(torch.randn(8, 256).to(torch.bfloat16).cuda(), packed, scale, gs, None, "w4a8", lora=lora)
    assert swapab_calls == []


def test_w4a8_takes_swapab_from_256_to_1024_rows(gen):
    from kernels.backends import w4a8_swapab

    packed, scale, _ = _layer(64, 256, gen, False)
    for m, taken in [(255, False), (256, True), (512, True), (1024, True), (1025, False)]:
        x = torch.empty(m, 256, dtype=torch.bfloat16, device="cuda")
        assert w4a8_swapab.swapab_supports(x, packed, scale) == taken, m
