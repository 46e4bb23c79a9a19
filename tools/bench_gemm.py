"""GEMM benchmark: every FLUX.1-dev block linear at 1024x1024, each method, one process.

Methods (all on the same NVFP4 weights and bf16 activations, same GPU, same run):
  bf16          cuBLAS bf16 (torch.nn.functional.linear) on the dequantized weights
  fp8_gemm      cuBLAS FP8 row-wise (torch._scaled_mm) alone: weights pre-decoded, activations pre-quantized
  comfy_nvfp4   ComfyUI's own NVFP4 path without FP4 hardware: comfy-kitchen dequantize_nvfp4 + bf16 matmul
  w4a8          this pack's W4A8 op (decode once per call + per-token FP8 + cuBLAS FP8; W4A16 at M = 1,
                the fused swap-AB GEMM for 256..1024 rows on sm_90)
  w4a8_fp8path  the W4A8 op forced onto its decode + cuBLAS FP8 path at every M (no GEMV, no swap-AB GEMM)
  fp8_resident  this pack's fp8-resident op (weights decoded at load; per-token FP8 + cuBLAS FP8)
  w4a16         this pack's W4A16 op (Ampere path: GEMV, fused decode GEMM, or decode + cuBLAS, per shape)
  w4a8_lora, fp8_resident_lora
                the same ops with a rank-``--lora-rank`` LoRA branch (inside the FP8 GEMM as extra K)
  w4a8_lora_unfused
                W4A8 plus the branch added after it in bf16 ((x @ A^T) @ B^T, the earlier design)
Also timed alone: the FP4->FP8 decode (GB/s) and the activation quantization.

"ms" (the headline): GPU time per call from CUDA-graph replays over enough weight copies to
exceed L2, so weights stream from HBM as in a real forward and Python launch cost is excluded
(as under torch.compile / in a busy forward where the CPU runs ahead). "ms_flushed": median of
triton.testing.do_bench, one Python call at a time with L2 flushed (launch cost included).
Errors are relative Frobenius errors against float64 x @ dequant(W)^T. Prints a table; writes JSON.

  python tools/bench_gemm.py --out bench_gemm.json [--tune --save-tuned kernels/tuned/]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import autotune, fp4_linear, nvfp4_dequantize, nvfp4_quantize, swap_nibbles, swizzle_scales  # noqa: E402
from kernels.backends import w4a8, w4a16  # noqa: E402
from kernels.backends.fp8_act_quant import quantize_act_fp8  # noqa: E402
from kernels.backends.weight_decode import decode_nvfp4_dense, decode_nvfp4_to_fp8, fp8_row_shift  # noqa: E402
from kernels.flux_shapes import GemmShape, flux_block_gemms  # noqa: E402
from kernels.fp4_linear import prepare_lora  # noqa: E402

METHODS = ["bf16", "fp8_gemm", "comfy_nvfp4", "w4a8", "w4a8_fp8path", "fp8_resident", "w4a16",
           "w4a8_lora", "fp8_resident_lora", "w4a8_lora_unfused"]  # fmt: skip


def bench_flushed(fn) -> float:
    """Median ms per call, L2 flushed before each call, launched one at a time from Python
    (so the op's CPU launch cost shows where the GPU work is shorter than it)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_graph_rotated(fns, replays: int = 20) -> float:
    """Median GPU ms per call: ``fns`` (one per weight copy, together larger than L2) captured
    in one CUDA graph, replayed; no Python launch cost, weights streamed from HBM as in a forward."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    times = [ms / len(fns) for ms in autotune.graph_replay_ms(graph, replays)]
    del graph
    return sorted(times)[len(times) // 2]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


class LayerCopy:
    """One NVFP4 weight and every derived form the methods use."""

    def __init__(self, shape, gen, lora_rank: int) -> None:
        w = torch.randn(shape.n, shape.k, generator=gen, device="cuda") * 0.02
        # a LoRA whose branch is ~30% of the layer's output (as a strong style LoRA)
        self.down = torch.randn(lora_rank, shape.k, generator=gen, device="cuda") / shape.k**0.5
        self.up = torch.randn(shape.n, lora_rank, generator=gen, device="cuda") * (
            0.3 * 0.02 * shape.k**0.5 / lora_rank**0.5
        )
        self.packed, self.scale, self.gs = nvfp4_quantize(w)
        self.row_shift = fp8_row_shift(self.scale)
        self.w_bf16 = nvfp4_dequantize(self.packed, self.scale, self.gs, dtype=torch.bfloat16)
        self.w8, self.col_scale = decode_nvfp4_to_fp8(self.packed, self.scale, self.gs)
        self.ck_packed = swap_nibbles(self.packed)  # comfy-kitchen: even element in the high nibble
        self.ck_scale = swizzle_scales(self.scale)  # and scales in cuBLAS's tiled layout
        bf16 = torch.bfloat16
        self.lora_w4a8 = prepare_lora(
            "w4a8", self.packed, self.scale, self.gs, self.row_shift, self.down, self.up, bf16
        )
        self.lora_fp8r = prepare_lora("fp8_resident", self.w8, self.scale.new_empty(0), self.col_scale, None,
                                      self.down, self.up, bf16)  # fmt: skip
        self.lora_bf16 = prepare_lora("reference", self.packed, self.scale, self.gs, None, self.down, self.up, bf16)

    def methods(self, x, q, row_scale) -> dict:
        c = self
        fns = {
            "bf16": lambda: F.linear(x, c.w_bf16),
            "fp8_gemm": lambda: torch._scaled_mm(
                q, c.w8.t(), scale_a=row_scale[:, None], scale_b=c.col_scale[None, :], out_dtype=torch.bfloat16,
                use_fast_accum=True,
            ),
            "w4a8": lambda: fp4_linear(x, c.packed, c.scale, c.gs, None, "w4a8", c.row_shift),
            "w4a8_fp8path": lambda: _forced_fp8path(x, c),
            "fp8_resident": lambda: fp4_linear(x, c.w8, c.scale.new_empty(0), c.col_scale, None, "fp8_resident"),
            "w4a16": lambda: fp4_linear(x, c.packed, c.scale, c.gs, None, "w4a16"),
            "w4a8_lora": lambda: fp4_linear(x, c.packed, c.scale, c.gs, None, "w4a8", c.row_shift, c.lora_w4a8),
            "fp8_resident_lora": lambda: fp4_linear(x, c.w8, c.scale.new_empty(0), c.col_scale, None, "fp8_resident",
                                                    None, c.lora_fp8r),
            "w4a8_lora_unfused": lambda: fp4_linear(x, c.packed, c.scale, c.gs, None, "w4a8", c.row_shift)
            + F.linear(F.linear(x, c.lora_bf16[0]), c.lora_bf16[1]),
        }  # fmt: skip
        try:
            import comfy_kitchen as ck
        except ImportError:
            pass
        else:
            fns["comfy_nvfp4"] = lambda: F.linear(x, ck.dequantize_nvfp4(c.ck_packed, c.gs, c.ck_scale, torch.bfloat16))
        return fns


def _forced_fp8path(x, c):
    old, w4a8.W4A8_SMALL_M = w4a8.W4A8_SMALL_M, 0
    supports, w4a8.swapab_supports = w4a8.swapab_supports, lambda *a: False
    try:
        return fp4_linear(x, c.packed, c.scale, c.gs, None, "w4a8", c.row_shift)
    finally:
        w4a8.W4A8_SMALL_M = old
        w4a8.swapab_supports = supports


def run_shape(shape, methods, gen, lora_rank: int) -> dict:
    packed_bytes = shape.n * shape.k * (0.5 + 1 / 16)
    copies = [LayerCopy(shape, gen, lora_rank) for _ in range(max(2, min(40, math.ceil(160e6 / packed_bytes))))]
    x = torch.randn(shape.m, shape.k, generator=gen, device="cuda").to(torch.bfloat16)
    q, row_scale = quantize_act_fp8(x)
    c0 = copies[0]
    ref = x.double() @ nvfp4_dequantize(c0.packed, c0.scale, c0.gs, dtype=torch.float64).T
    ref_lora = ref + (x.double() @ c0.down.double().T) @ c0.up.double().T
    per_copy = [c.methods(x, q, row_scale) for c in copies]
    row = {"name": shape.name, "m": shape.m, "k": shape.k, "n": shape.n, "count": shape.count,
           "weight_copies": len(copies), "ms": {}, "ms_flushed": {}, "err": {}}  # fmt: skip
    for name in methods:
        if name not in per_copy[0]:
            continue
        with autotune.tuning_enabled():
            y = per_copy[0][name]()  # tunes Triton configs for this shape (outside the timed region)
        torch.cuda.synchronize()
        row["err"][name] = rel_err(y, ref_lora if "lora" in name else ref)
        row["ms"][name] = bench_graph_rotated([fns[name] for fns in per_copy])
        row["ms_flushed"][name] = bench_flushed(per_copy[0][name])
    decode_bytes = shape.n * shape.k * (0.5 + 1 / 16 + 1)
    row["decode_ms"] = bench_graph_rotated(
        [lambda c=c: decode_nvfp4_to_fp8(c.packed, c.scale, c.gs, row_shift=c.row_shift) for c in copies]
    )
    row["decode_gbps"] = decode_bytes / row["decode_ms"] / 1e6
    row["act_quant_ms"] = bench_graph_rotated([lambda: quantize_act_fp8(x)])
    dense = torch.empty(shape.n * shape.k, dtype=torch.bfloat16, device="cuda")
    row["dense_decode_gbps"] = (
        shape.n
        * shape.k
        * (0.5 + 1 / 16 + 2)
        / 1e6
        / bench_graph_rotated([lambda c=c: decode_nvfp4_dense(c.packed, c.scale, c.gs, dense) for c in copies])
    )
    row["w4a16_path"] = w4a16_path(shape.m, shape.n, shape.k)
    row["tflops"] = {name: shape.flops / ms / 1e9 for name, ms in row["ms"].items()}
    return row


def w4a16_path(m: int, n: int, k: int) -> str:
    """Which W4A16 path the tuner (or the default) takes for this shape."""
    if m <= w4a16.GEMV_MAX_M:
        return "gemv"
    key = autotune.cache_key("w4a16_gemm", (w4a16.m_bucket(m), n, k, str(torch.bfloat16)))
    cfg = autotune._cache.get(key) or w4a16._gemm_candidates(m)[0]
    return "decode+cuBLAS" if cfg.get("DENSE") else "fused"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_gemm.json")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--probe-m", default="4,16,64,128,256", help="extra M values on the qkv shape (count 0)")
    ap.add_argument("--save-tuned", default=None, help="folder to write the tuned-config JSON into")
    ap.add_argument("--lora-rank", type=int, default=32, help="rank of the *_lora methods' LoRA")
    args = ap.parse_args()

    methods = args.methods.split(",")
    gen = torch.Generator(device="cuda").manual_seed(0)
    autotune.load_shipped_configs()
    t0 = time.time()
    shapes = flux_block_gemms(args.width, args.height)
    shapes += [GemmShape(f"probe.qkv.M{m}", int(m), 3072, 9216, 0) for m in args.probe_m.split(",") if m]
    rows = [run_shape(s, methods, gen, args.lora_rank) for s in shapes]
    totals = {m: sum(r["ms"][m] * r["count"] for r in rows if m in r["ms"]) for m in methods}
    bf16_total = totals.get("bf16")
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "resolution": [args.width, args.height],
        "lora_rank": args.lora_rank,
        "rows": rows,
        "forward_gemm_ms": totals,
        "speedup_vs_bf16": {m: bf16_total / t for m, t in totals.items() if t and bf16_total},
        "seconds": time.time() - t0,
        "tuning": dict(autotune.stats),
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    if args.save_tuned:
        autotune.save_cache_file(pathlib.Path(args.save_tuned) / f"{autotune.device_signature()}.json")

    shown = [m for m in methods if m in totals and totals[m]]
    print(f"{result['gpu']}  torch {result['torch']}  triton {result['triton']}")
    print(f"{'shape':34s} {'M':>5s} {'K':>6s} {'N':>6s} " + " ".join(f"{m:>12s}" for m in shown)
          + "  dec GB/s  bf16dec GB/s  actq ms  w4a16 path")  # fmt: skip
    for r in rows:
        ratio = " ".join(f"{r['ms']['bf16'] / r['ms'][m]:11.2f}x" if m in r["ms"] else f"{'-':>12s}" for m in shown)
        print(f"{r['name']:34s} {r['m']:5d} {r['k']:6d} {r['n']:6d} {ratio}  {r['decode_gbps']:8.0f}  "
              f"{r['dense_decode_gbps']:12.0f}  {r['act_quant_ms']:.4f}  {r['w4a16_path']}")  # fmt: skip
    print("one-call-at-a-time ratios (do_bench, L2 flushed, Python launch cost included):")
    for r in rows:
        f = r["ms_flushed"]
        print(f"  {r['name']:34s} " + " ".join(
            f"{f['bf16'] / f[m]:6.2f}x" if f.get(m) and f.get("bf16") else "   -   " for m in shown))  # fmt: skip
    print("bf16 ms per shape: " + ", ".join(f"{r['ms']['bf16']:.4f}" for r in rows))
    print("max rel err: " + ", ".join(f"{m}={max(r['err'][m] for r in rows if m in r['err']):.4f}" for m in shown))
    print("forward GEMM ms: " + ", ".join(f"{m}={totals[m]:.2f}" for m in shown))
    print("speedup vs bf16: " + ", ".join(f"{m}={v:.3f}x" for m, v in result["speedup_vs_bf16"].items()))
    for base, with_lora in (
        ("w4a8", "w4a8_lora"),
        ("fp8_resident", "fp8_resident_lora"),
        ("w4a8", "w4a8_lora_unfused"),
    ):
        if totals.get(base) and totals.get(with_lora):
            extra = totals[with_lora] - totals[base]
            print(f"rank-{args.lora_rank} LoRA on every block GEMM, {with_lora}: +{extra:.2f} ms per forward "
                  f"(+{100 * extra / totals[base]:.1f}% of {base}'s GEMM time)")  # fmt: skip


if __name__ == "__main__":
    main()
