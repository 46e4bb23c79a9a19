"""Session 13 experiment: W4A8 at M = 512 with the weight decode split into N-chunks on one side stream
and each chunk's cuBLAS FP8 GEMM on its own stream as soon as its chunk is decoded, so the decode of
chunk j + 1 runs beside the GEMM of chunk j (the GEMM of one chunk fills only part of the GPU).
Against cuBLAS bf16 and the pack's W4A8 op in the same process; GPU time per call
(kernels.autotune.gpu_time_ms: CUDA graph, cold L2), error vs float64; JSON to $OUT/chunked_probe.json.

  python bench/probes/bench_w4a8_chunked.py qkv:512:9216:3072,mlp2:512:3072:12288 1,2,4,8
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from kernels import autotune, fp4_linear, nvfp4_dequantize, nvfp4_quantize  # noqa: E402
from kernels.backends.fp8_act_quant import quantize_act_fp8  # noqa: E402
from kernels.backends.weight_decode import decode_nvfp4_to_fp8, fp8_row_shift  # noqa: E402

STREAMS = [torch.cuda.Stream() for _ in range(9)]


def chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    step = triton.cdiv(triton.cdiv(n, chunks), 128) * 128
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def chunked(x, packed, scale, gs, shift, bias, w8, y, chunks: int):
    """y = W4A8(x); the decode stream writes chunk after chunk of ``w8``, GEMM stream j waits for
    chunk j; the caller's stream joins them all."""
    main = torch.cuda.current_stream()
    q, xs = quantize_act_fp8(x)
    dec = STREAMS[0]
    dec.wait_stream(main)
    gemms = []
    for j, (a, b) in enumerate(chunk_bounds(packed.shape[0], chunks)):
        with torch.cuda.stream(dec):
            w8c, cs = decode_nvfp4_to_fp8(packed[a:b], scale[a:b], gs, out=w8[a:b], row_shift=shift[a:b])
            done = torch.cuda.Event()
            done.record(dec)
        g = STREAMS[1 + j % 8]
        g.wait_stream(main)
        g.wait_event(done)
        with torch.cuda.stream(g):
            torch._scaled_mm(
                q, w8c.t(), scale_a=xs[:, None], scale_b=cs[None, :], bias=None if bias is None else bias[a:b],
                out_dtype=torch.bfloat16, use_fast_accum=True, out=y[:, a:b],
            )  # fmt: skip
        gemms.append(g)
    for g in gemms:
        main.wait_stream(g)
    return y


def run_shape(name: str, m: int, n: int, k: int, chunk_counts: list, gen: torch.Generator) -> dict:
    w = torch.randn(n, k, generator=gen, device="cuda") / k**0.5
    packed, scale, gs = nvfp4_quantize(w)
    shift = fp8_row_shift(scale)
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16) * 0.1
    x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
    wd = nvfp4_dequantize(packed, scale, gs, dtype=torch.float64)
    ref = x.double() @ wd.T + bias.double()
    wb = wd.to(torch.bfloat16)
    w8 = torch.empty((n, k), dtype=torch.float8_e4m3fn, device="cuda")
    y = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")

    def err(t):
        return ((t.double() - ref).norm() / ref.norm()).item()

    row = {"name": name, "m": m, "n": n, "k": k, "us": {}, "err": {}}
    row["us"]["bf16"] = 1000 * autotune.gpu_time_ms(lambda: F.linear(x, wb, bias))
    row["us"]["w4a8"] = 1000 * autotune.gpu_time_ms(lambda: fp4_linear(x, packed, scale, gs, bias, "w4a8", shift))
    row["err"]["w4a8"] = err(fp4_linear(x, packed, scale, gs, bias, "w4a8", shift))
    for c in chunk_counts:
        try:
            y.zero_()
            torch.cuda.synchronize()
            row["err"][f"chunks_{c}"] = err(chunked(x, packed, scale, gs, shift, bias, w8, y, c).clone())
            row["us"][f"chunks_{c}"] = 1000 * autotune.gpu_time_ms(
                lambda c=c: chunked(x, packed, scale, gs, shift, bias, w8, y, c)
            )
        except Exception as e:  # noqa: BLE001 - report and go on
            row["err"][f"chunks_{c}"] = repr(e)[:300]
            print("FAIL", c, repr(e)[:300], flush=True)
    return row


def main() -> None:
    autotune.load_shipped_configs()
    shapes = [(s.split(":")[0], *[int(v) for v in s.split(":")[1:]]) for s in sys.argv[1].split(",")]
    chunk_counts = [int(c) for c in sys.argv[2].split(",")]
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, m, n, k in shapes:
        row = run_shape(name, m, n, k, chunk_counts, gen)
        us, errs = row["us"], row["err"]
        print(
            f"{name} M={m} N={n} K={k}: "
            + ", ".join(f"{key} {v:.1f} us ({us['bf16'] / v:.2f}x)" for key, v in us.items())
        )
        print(
            "   err: "
            + ", ".join(f"{key} {v:.4f}" if isinstance(v, float) else f"{key} {v}" for key, v in errs.items())
        )
        out["rows"].append(row)
        json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "chunked_probe.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
