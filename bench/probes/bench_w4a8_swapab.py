"""Session 14 probe: the W4A8 op at M = 512 (the fused swap-AB GEMM, kernels/backends/w4a8_swapab.py)
against cuBLAS bf16 and the decode + cuBLAS FP8 path, under variants of the swap-AB module's
constants; GPU time per call (kernels.autotune.gpu_time_ms, cold L2), error vs float64; JSON to
$OUT/swapab_probe.json.

  python bench/probes/bench_w4a8_swapab.py qkv:512:9216:3072,proj:512:3072:3072 TOKEN_WARPGROUPS=1,TOKEN_WARPGROUPS=2

A variant is NAME=VALUE[;NAME=VALUE...] over the module's upper-case constants (Python literals).
"""

import ast
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from kernels import autotune, fp4_linear, nvfp4_dequantize, nvfp4_quantize  # noqa: E402
from kernels.backends import w4a8, w4a8_swapab  # noqa: E402
from kernels.backends.weight_decode import fp8_row_shift  # noqa: E402


def _set(assignments: str) -> None:
    for kv in assignments.split(";"):
        key, val = kv.split("=")
        setattr(w4a8_swapab, key, ast.literal_eval(val))


def run_shape(name: str, m: int, n: int, k: int, variants: list, gen: torch.Generator) -> dict:
    w = torch.randn(n, k, generator=gen, device="cuda") / k**0.5
    packed, scale, gs = nvfp4_quantize(w)
    shift = fp8_row_shift(scale)
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16) * 0.1
    x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
    ref = x.double() @ nvfp4_dequantize(packed, scale, gs, dtype=torch.float64).T + bias.double()
    wb = nvfp4_dequantize(packed, scale, gs, dtype=torch.bfloat16)

    def op():
        return fp4_linear(x, packed, scale, gs, bias, "w4a8", shift)

    row = {"name": name, "m": m, "n": n, "k": k, "us": {}, "err": {}}
    row["us"]["bf16"] = 1000 * autotune.gpu_time_ms(lambda: F.linear(x, wb, bias))
    supports, w4a8.swapab_supports = w4a8.swapab_supports, lambda *a: False
    row["us"]["decode+cublas"] = 1000 * autotune.gpu_time_ms(op)
    w4a8.swapab_supports = supports
    defaults = ";".join(f"{kv.split('=')[0]}={getattr(w4a8_swapab, kv.split('=')[0])}" for v in variants
                        for kv in v.split(";"))  # fmt: skip
    for v in variants:
        _set(v)
        try:
            row["err"][v] = ((op().double() - ref).norm() / ref.norm()).item()
            row["us"][v] = 1000 * autotune.gpu_time_ms(op)
        except Exception as e:  # e.g. a variant that needs more shared memory than the GPU has
            row["err"][v], row["us"][v] = f"{type(e).__name__}: {str(e)[:120]}", float("nan")
        _set(defaults)
    return row


def main() -> None:
    shapes = [(s.split(":")[0], *[int(v) for v in s.split(":")[1:]]) for s in sys.argv[1].split(",")]
    variants = re.split(r",(?![^()]*\))", sys.argv[2])  # commas inside (..) belong to a tuple value
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, m, n, k in shapes:
        row = run_shape(name, m, n, k, variants, gen)
        us = row["us"]
        print(f"{name} M={m} N={n} K={k}: bf16 {us['bf16']:.1f} us, decode+cublas {us['decode+cublas']:.1f}")
        for v in variants:
            print(f"   {v:40s} {us[v]:7.1f} us  vs bf16 {us['bf16'] / us[v]:.3f}x  err {row['err'][v]}")
        out["rows"].append(row)
        json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "swapab_probe.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
