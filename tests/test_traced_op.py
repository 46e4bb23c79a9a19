"""The ``triton_op`` twin of the FP4 op under ``torch.compile`` (GPU; Inductor backend).

Compiled FP4 linears on CUDA go through ``nvfp4_flux::fp4_linear_traced``: Inductor traces the
backend once and launches its kernels from generated code. The compiled result must be the
eager op's bytes (same kernels, same configs, same cuBLAS call), with one graph and no break,
for every path a backend has (GEMV, decode + FP8 GEMM, LoRA columns, fused and dense W4A16).
Without a GPU only the registration is checked: Triton's CPU interpreter cannot be traced.
"""

from __future__ import annotations

import re

import pytest
import torch
from markers import requires_cuda
from torch import nn

from kernels import FP4Linear
from kernels.fp4_linear import prepare_lora
from kernels.triton_support import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def test_traced_twin_is_registered_with_the_eager_schema():
    import kernels.fp4_linear_op  # noqa: F401  (registers both)

    eager = torch.ops.nvfp4_flux.fp4_linear.default._schema
    traced = torch.ops.nvfp4_flux.fp4_linear_traced.default._schema
    assert [(a.name, str(a.type)) for a in eager.arguments] == [(a.name, str(a.type)) for a in traced.arguments]


def test_traced_twin_passes_opcheck_on_the_cpu(gen):
    """Its fake implementation and its decomposition under AOT dispatch (functionalization), with
    the pure-torch reference backend: what Inductor traces, minus the Triton kernels."""
    from kernels import nvfp4_quantize

    packed, scales, gs = nvfp4_quantize(torch.randn(24, 64, generator=gen))
    x = torch.randn(5, 64, generator=gen, dtype=torch.bfloat16)
    args = (x, packed, scales, gs, None, None, None, None, None, "reference")
    torch.library.opcheck(torch.ops.nvfp4_flux.fp4_linear_traced.default, args,
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))  # fmt: skip
    assert torch.equal(torch.ops.nvfp4_flux.fp4_linear_traced(*args), torch.ops.nvfp4_flux.fp4_linear(*args))


def test_cpu_compile_keeps_the_eager_op(gen):
    """On the CPU (reference backend) a compiled FP4 layer keeps the opaque eager op."""
    torch._dynamo.reset()
    layer = FP4Linear.from_linear(nn.Linear(64, 32)).float()
    gm_ops: list[str] = []

    def backend(gm, example_inputs):
        gm_ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch.compile(layer, backend=backend, fullgraph=True)(torch.randn(3, 64, generator=gen))
    assert gm_ops == ["nvfp4_flux.fp4_linear"]


CASES = [  # (backend, M, K, N, bias, lora)
    ("w4a8", 1, 256, 384, True, False),  # GEMV
    ("w4a8", 77, 256, 384, True, False),  # decode + FP8 GEMM
    ("w4a8", 77, 256, 384, False, True),  # LoRA columns in the decode launch
    ("fp8_resident", 1, 256, 384, True, False),  # FP8-weight GEMV
    ("fp8_resident", 1, 256, 384, False, False),  # (no bias: a None pointer argument)
    ("fp8_resident", 77, 256, 384, True, False),
    ("fp8_resident", 77, 256, 384, False, True),
    ("w4a16", 1, 256, 384, True, False),  # GEMV (pair table)
    ("w4a16", 9, 256, 384, False, False),  # fused
    ("w4a16", 600, 256, 384, True, False),  # decode + cuBLAS (default above the fused limit)
    ("w4a4", 33, 256, 384, True, False),  # NVFP4 quantizer (+ emulated GEMM off Blackwell)
]


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_compiled_equals_eager_bytes_one_graph(case, gen, caplog):
    backend, m, k, n, bias, lora = case
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    layer = FP4Linear.from_linear(nn.Linear(k, n, bias=bias)).to("cuda", torch.bfloat16).prepare(backend)
    x = torch.randn(m, k, generator=gen).to("cuda", torch.bfloat16)
    if lora:
        plain = layer(x)
        down = torch.randn(16, k, generator=gen).cuda() * 0.05
        up = torch.randn(n, 16, generator=gen).cuda() * 0.05
        layer.lora = prepare_lora(backend, layer.weight, layer.weight_scale, layer.weight_scale_2, layer.aux,
                                  down, up, torch.bfloat16)  # fmt: skip
        assert not torch.equal(layer(x), plain), "the LoRA branch is applied"
    eager = layer(x)
    compiled = torch.compile(layer, backend="inductor", fullgraph=True)
    y = compiled(x)
    assert counters["stats"]["unique_graphs"] == 1 and sum(counters["graph_break"].values()) == 0
    from kernels.backends.w4a4 import native_w4a4_check

    if backend == "w4a4" and not native_w4a4_check(x.device)[0]:
        # off Blackwell the GEMM is an emulation in float32 torch ops, which Inductor fuses its own way
        torch.testing.assert_close(y, eager, rtol=2**-7, atol=2e-3)
    else:
        assert y.dtype == eager.dtype and torch.equal(y, eager), (y.float() - eager.float()).abs().max()
    assert torch.equal(compiled(x.clone()), y) and counters["stats"]["unique_graphs"] == 1
    # Inductor read every kernel's stores (otherwise it assumes all inputs mutated and copies weights)
    assert "identify_mutated_tensors" not in caplog.text


@requires_cuda
def test_compiled_graph_uses_the_traced_op(gen):
    """What Dynamo records for a CUDA W4A8 layer: the triton_op twin, not the eager op."""
    torch._dynamo.reset()
    layer = FP4Linear.from_linear(nn.Linear(64, 32)).to("cuda", torch.bfloat16).prepare("w4a8")
    targets: list[str] = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm

    torch.compile(layer, backend=backend, fullgraph=True)(torch.randn(8, 64, generator=gen).to("cuda", torch.bfloat16))
    assert targets == ["nvfp4_flux.fp4_linear_traced"]


@requires_cuda
def test_inductor_launches_the_pack_kernels_itself(gen):
    """Inductor's generated code launches the decode and quantize kernels and calls cuBLAS FP8
    directly: no call back into the pack's Python op, no copy of the packed weight. (1100 rows:
    above the swap-AB GEMM's range, see the next test.)"""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    layer = FP4Linear.from_linear(nn.Linear(256, 384)).to("cuda", torch.bfloat16).prepare("w4a8")
    x = torch.randn(1100, 256, generator=gen).to("cuda", torch.bfloat16)
    _, sources = run_and_get_code(torch.compile(layer, backend="inductor", fullgraph=True), x)
    code = "\n".join(sources)
    print(code)
    assert "_decode_kernel" in code and "_act_quant_kernel" in code and "_scaled_mm" in code
    assert "nvfp4_flux" not in code.replace("nvfp4_flux_", "")


@requires_cuda
def test_inductor_calls_the_swapab_gemm_as_one_opaque_op(gen):
    """For 256..1024 rows on sm_90 the W4A8 layer is the Gluon swap-AB GEMM, which Inductor
    cannot launch itself: its generated code calls ``nvfp4_flux.w4a8_swapab`` once, nothing else."""
    from torch._inductor.utils import run_and_get_code

    from kernels.backends.w4a8_swapab import swapab_supports

    torch._dynamo.reset()
    layer = FP4Linear.from_linear(nn.Linear(256, 384)).to("cuda", torch.bfloat16).prepare("w4a8")
    x = torch.randn(300, 256, generator=gen).to("cuda", torch.bfloat16)
    if not swapab_supports(x, layer.weight, layer.weight_scale):
        pytest.skip("the swap-AB GEMM needs sm_90 and Triton with Gluon")
    y, sources = run_and_get_code(torch.compile(layer, backend="inductor", fullgraph=True), x)
    code = "\n".join(sources)
    assert re.findall(r"= torch\.ops\.nvfp4_flux\.(\w+)\.default\(", code) == ["w4a8_swapab"], code
    assert "_decode_kernel" not in code and "_scaled_mm" not in code
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("backend", ["w4a8", "fp8_resident", "w4a16"])
def test_a_computed_input_is_written_once(backend, gen):
    """The GELU between two compiled FP4 linears stores each element once. (A kernel given one
    tensor for two pointer arguments made Inductor materialize it once per argument: the GELU
    was written twice before every act-quant, session 10.)"""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    up, down = (FP4Linear.from_linear(lin).to("cuda", torch.bfloat16).prepare(backend)
                for lin in (nn.Linear(256, 512), nn.Linear(512, 256)))  # fmt: skip

    def mlp(x):
        return down(nn.functional.gelu(up(x), approximate="tanh"))

    x = torch.randn(600, 256, generator=gen).to("cuda", torch.bfloat16)
    y, sources = run_and_get_code(torch.compile(mlp, backend="inductor", fullgraph=True), x)
    stores = re.findall(r"'kernel_name': '(triton_\w*gelu\w*)'.*?'num_store': (\d+)", "\n".join(sources))
    assert stores and all(n == "1" for _, n in stores), stores
    ref = mlp(x).float()  # eager (aten's GELU may round a few values differently from Inductor's)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
