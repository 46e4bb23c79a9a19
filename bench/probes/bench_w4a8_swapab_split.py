"""Session 14 probe: where the W4A8 swap-AB op's time goes at M = 512, timed as tools/bench_gemm.py times
(CUDA-graph replays over weight copies larger than L2): the whole op, its activation quantization
alone, its GEMM alone on pre-quantized activations, cuBLAS bf16. JSON to $OUT/swapab_split.json.

  python bench/probes/bench_w4a8_swapab_split.py proj:512:3072:3072,qkv:512:9216:3072
"""

import json
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_gemm import bench_graph_rotated  # noqa: E402

from kernels import fp4_linear, nvfp4_dequantize, nvfp4_quantize  # noqa: E402
from kernels.backends import w4a8_swapab  # noqa: E402
from kernels.backends.fp8_act_quant import quantize_act_fp8  # noqa: E402
from kernels.backends.weight_decode import fp8_row_shift  # noqa: E402


def weight_copies(n: int, k: int, gen: torch.Generator) -> list:
    """Enough NVFP4 weight copies to exceed L2 (up to 40): ``(packed, scale, alpha, row_shift, bf16)`` each."""
    copies = []
    for _ in range(max(2, min(40, math.ceil(160e6 / (n * k * 0.5625))))):
        packed, scale, gs = nvfp4_quantize(torch.randn(n, k, generator=gen, device="cuda") / k**0.5)
        wb = nvfp4_dequantize(packed, scale, gs, dtype=torch.bfloat16)
        copies.append((packed, scale, gs, fp8_row_shift(scale), wb))
    return copies


def run_shape(name: str, m: int, n: int, k: int, gen: torch.Generator) -> dict:
    copies = weight_copies(n, k, gen)
    x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
    q, xs = quantize_act_fp8(x, wgmma_k_order=True)
    ms = {
        "bf16": bench_graph_rotated([lambda c=c: F.linear(x, c[4]) for c in copies]),
        "op": bench_graph_rotated([lambda c=c: fp4_linear(x, c[0], c[1], c[2], None, "w4a8", c[3]) for c in copies]),
        "act_quant": bench_graph_rotated([lambda: quantize_act_fp8(x, wgmma_k_order=True) for _ in copies]),
        "gemm": bench_graph_rotated(
            [lambda c=c: w4a8_swapab._launch_swapab(q, xs, c[0], c[1], c[3], c[2], None) for c in copies]
        ),
    }
    return {"name": name, "m": m, "n": n, "k": k, "copies": len(copies), "us": {a: 1000 * b for a, b in ms.items()}}


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = {"device": torch.cuda.get_device_name(), "rows": []}
    for spec in sys.argv[1].split(","):
        name, m, n, k = spec.split(":")[0], *[int(v) for v in spec.split(":")[1:]]
        row = run_shape(name, m, n, k, gen)
        print(name, {a: round(b, 1) for a, b in row["us"].items()}, flush=True)
        out["rows"].append(row)
    json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "swapab_split.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
