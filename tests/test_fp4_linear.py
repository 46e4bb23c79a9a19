"""FP4Linear and the fp4_linear op on the reference backend (CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kernels import FP4Linear, fp4_linear, nvfp4_dequantize, nvfp4_quantize


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def float64_reference(x: torch.Tensor, m: FP4Linear) -> torch.Tensor:
    w = nvfp4_dequantize(m.weight, m.weight_scale, m.weight_scale_2, dtype=torch.float64)
    y = x.double() @ w.T
    return y if m.bias is None else y + m.bias.double()


# bf16: weights rounded to bf16 (2^-9 relative) and bf16 accumulation order: ~0.3% measured;
# float32 activations: the dequantized weights are exact in float32.
BOUNDS = {torch.bfloat16: 1e-2, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64, 32), (7, 256, 96), (2, 5, 128, 48)], ids=str)
def test_fp4_linear_matches_float64_reference(shape, bias, dtype, gen):
    *lead, k, n = shape
    dense = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(n, k, generator=gen) * 0.05)
        if bias:
            dense.bias.copy_(torch.randn(n, generator=gen))
    m = FP4Linear.from_linear(dense).to(dtype)
    x = torch.randn(*lead, k, generator=gen).to(dtype)
    y = m(x)
    assert y.shape == (*lead, n) and y.dtype == dtype
    assert not torch.isnan(y).any()
    assert rel_err(y, float64_reference(x, m)) < BOUNDS[dtype]


def test_per_channel_alpha(gen):
    """A fused layer with a different global scale per part: alpha is a [N] vector."""
    parts = [torch.randn(16, 64, generator=gen) * s for s in (0.01, 1.0, 30.0)]
    quantized = [nvfp4_quantize(p) for p in parts]
    packed = torch.cat([q[0] for q in quantized])
    scales = torch.cat([q[1] for q in quantized])
    alpha = torch.cat([q[2].expand(16) for q in quantized])
    m = FP4Linear.from_quantized(packed, scales, alpha)
    x = torch.randn(4, 64, generator=gen)
    expected = torch.cat([x @ nvfp4_dequantize(*q, dtype=torch.float32).T for q in quantized], dim=-1)
    assert torch.equal(m.float()(x), expected)


def test_to_moves_everything_and_keeps_quantized_dtypes():
    m = FP4Linear.from_linear(nn.Linear(32, 16))
    m.to(torch.float16)
    dtypes = {k: v.dtype for k, v in m.state_dict().items()}
    assert dtypes == {
        "weight": torch.uint8,
        "weight_scale": torch.float8_e4m3fn,
        "weight_scale_2": torch.float32,
        "bias": torch.float16,
    }
    m.to("meta")
    assert {v.device.type for v in m.state_dict().values()} == {"meta"}


def test_state_dict_round_trips_through_safetensors(tmp_path, gen):
    dense = nn.Linear(128, 40)
    src = FP4Linear.from_linear(dense).to(torch.bfloat16)
    path = tmp_path / "layer.safetensors"
    save_file(src.state_dict(), str(path))
    dst = FP4Linear(128, 40, bias=True)
    dst.load_state_dict(load_file(str(path)))
    for key, value in src.state_dict().items():
        assert same_bits(dst.state_dict()[key], value), key
    x = torch.randn(3, 128, generator=gen, dtype=torch.bfloat16)
    assert torch.equal(dst(x), src(x))


def test_from_quantized_rejects_mismatched_scales():
    packed, scales, gs = nvfp4_quantize(torch.randn(8, 64))
    with pytest.raises(ValueError, match="weight_scale"):
        FP4Linear.from_quantized(packed, scales[:, :2], gs)


def test_unknown_backend_is_a_clear_error():
    m = FP4Linear.from_linear(nn.Linear(32, 16))
    m.backend = "nonexistent"
    with pytest.raises(ValueError, match="unknown FP4 backend 'nonexistent'"):
        m(torch.randn(1, 32))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


@pytest.mark.parametrize("with_lora", [True, False], ids=["lora", "no_lora"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_op_passes_torch_library_opcheck(with_bias, with_lora, gen):
    """Fake tensor, autograd registration and AOT dispatch checks. torch's schema check
    cannot compare float8 inputs on CPU, so non-mutation is checked directly instead."""
    packed, scales, gs = nvfp4_quantize(torch.randn(24, 64, generator=gen))
    x = torch.randn(5, 64, generator=gen, dtype=torch.bfloat16)
    bias = torch.randn(24, generator=gen, dtype=torch.bfloat16) if with_bias else None
    down, up = (
        (torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(24, 4, dtype=torch.bfloat16))
        if with_lora
        else (None, None)
    )
    args = (x, packed, scales, gs, bias, None, down, up, None, "reference")
    torch.library.opcheck(
        torch.ops.nvfp4_flux.fp4_linear.default,
        args,
        test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    before = [t.clone() for t in args[:4]]
    torch.ops.nvfp4_flux.fp4_linear(*args)
    assert all(same_bits(a, b) for a, b in zip(args[:4], before, strict=True))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = FP4Linear.from_linear(nn.Linear(64, 128))
        self.down = FP4Linear.from_linear(nn.Linear(128, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


def test_torch_compile_fullgraph_has_no_graph_break(gen):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    block = _Block().float()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(4, 64, generator=gen)
    y = compiled(x)
    assert torch.allclose(y, block(x), rtol=1e-5, atol=1e-5)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    # the op stays one opaque node per linear in the traced graph
    explain = torch._dynamo.explain(block)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1


def test_functional_op_equals_module(gen):
    m = FP4Linear.from_linear(nn.Linear(48, 32)).to(torch.bfloat16)
    x = torch.randn(2, 48, generator=gen, dtype=torch.bfloat16)
    assert torch.equal(fp4_linear(x, m.weight, m.weight_scale, m.weight_scale_2, m.bias), m(x))
