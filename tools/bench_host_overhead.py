"""Host (CPU) time per FP4 linear call, eager and compiled, against bf16 ``nn.Linear``.

A chain of ``--layers`` tiny linears (M x 256 -> 256) so the GPU work per call is a few
microseconds and the wall time per call is what the host spends launching it; the GPU time of
the same chain (CUDA-graph replay, :func:`kernels.autotune.gpu_time_ms`) is printed next to it
as the floor. Compiled = ``torch.compile`` with Inductor, as ComfyUI's TorchCompileModel does:
the pack's layers then go through the ``triton_op`` twin of the op and Inductor launches their
kernels (:mod:`kernels.fp4_linear_op`).

    python tools/bench_host_overhead.py --json bench/host_overhead.json
    python tools/bench_host_overhead.py --configs w4a8 --profile 15   # where the eager host time goes
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pathlib
import sys
import time

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from kernels import FP4Linear, autotune  # noqa: E402
from kernels.fp4_linear import prepare_lora  # noqa: E402

CONFIGS = ["bf16", "w4a8", "w4a8+lora", "fp8_resident", "fp8_resident+lora", "w4a16"]


def build(config: str, layers: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    linears = [nn.Linear(width, width) for _ in range(layers)]
    if config == "bf16":
        return nn.Sequential(*linears).cuda().to(torch.bfloat16)
    backend, _, lora = config.partition("+")
    mods = []
    for lin in linears:
        m = FP4Linear.from_linear(lin).to("cuda", torch.bfloat16).prepare(backend)
        if lora:
            down, up = torch.randn(32, width).cuda() * 0.05, torch.randn(width, 32).cuda() * 0.05
            m.lora = prepare_lora(backend, m.weight, m.weight_scale, m.weight_scale_2, m.aux, down, up, torch.bfloat16)
        mods.append(m)
    return nn.Sequential(*mods)


def warm_up(fn, x: torch.Tensor) -> None:
    """Three calls (compiles, tunes, fills caches), then wait for the GPU."""
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()


def wall_us_per_call(fn, x: torch.Tensor, calls: int, reps: int = 5) -> float:
    warm_up(fn, x)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(10):
            fn(x)
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / 10)
    return best / calls * 1e6


def _where(code) -> str:
    if isinstance(code, str):
        return code
    return f"{pathlib.Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"


def eager_profile(fn, x: torch.Tensor, calls: int, top: int, passes: int = 20) -> list[dict]:
    """cProfile of ``passes`` eager passes: the ``top`` functions by own time, per linear call."""
    warm_up(fn, x)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(passes):
        fn(x)
    torch.cuda.synchronize()
    prof.disable()
    linear_calls = passes * calls
    return [
        {"function": _where(e.code), "own_us": e.inlinetime / linear_calls * 1e6,
         "cum_us": e.totaltime / linear_calls * 1e6, "calls_per_linear": e.callcount / linear_calls}
        for e in sorted(prof.getstats(), key=lambda e: e.inlinetime, reverse=True)[:top]
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--m", type=int, default=64, help="rows per call (64: the W4A8 decode + FP8 GEMM path)")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="also print the TOP functions by own host time of the eager calls (cProfile)",
    )
    args = ap.parse_args()
    autotune.load_shipped_configs()
    x = torch.randn(args.m, args.width, device="cuda", dtype=torch.bfloat16)
    rows = []
    print(f"{'config':20s} {'eager us':>9s} {'compiled us':>11s} {'GPU us':>7s}   (per linear call)")
    for config in args.configs.split(","):
        model = build(config, args.layers, args.width)
        with torch.no_grad():
            eager = wall_us_per_call(model, x, args.layers)
            gpu = autotune.gpu_time_ms(lambda model=model: model(x)) * 1e3 / args.layers
            torch._dynamo.reset()
            compiled_model = torch.compile(model, backend="inductor", fullgraph=True)
            compiled = wall_us_per_call(compiled_model, x, args.layers)
        row = {"config": config, "eager_us": eager, "compiled_us": compiled, "gpu_us": gpu}
        print(f"{config:20s} {eager:9.1f} {compiled:11.1f} {gpu:7.1f}", flush=True)
        if args.profile:
            with torch.no_grad():
                row["eager_profile"] = eager_profile(model, x, args.layers, args.profile)
            for p in row["eager_profile"]:
                print(
                    f"    {p['own_us']:7.2f} own {p['cum_us']:7.2f} cum {p['calls_per_linear']:5.2f}x  {p['function']}"
                )
        rows.append(row)
    if args.json:
        env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
        import triton

        env["triton"] = triton.__version__
        payload = {"environment": env, "layers": args.layers, "m": args.m, "width": args.width, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
