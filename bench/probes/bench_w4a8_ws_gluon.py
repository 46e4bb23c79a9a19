"""Session 12-13 experiment: a Gluon W4A8 probe (w4a8_ws_gluon.py, or the module named by the third
argument, e.g. w4a8_swapab_gluon with configs BN/BT/BK/STAGES/CSTAGES) against cuBLAS bf16,
the pack's W4A8 op (decode + cuBLAS FP8) and cuBLAS FP8 on pre-decoded weights; GPU time per call
(kernels.autotune.gpu_time_ms, cold L2), error vs float64; JSON to $OUT/ws_probe.json.

  python bench/probes/bench_w4a8_ws_gluon.py qkv:512:9216:3072,mlp2:512:3072:12288 128/128/128/4/6/8/80/4/1

Configs are BM/BN/BK/STAGES/CSTAGES/DEC_WARPS/DEC_REGS/num_warps/LUT (see the kernel's docstring).
"""

import importlib
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from kernels import autotune, fp4_linear, nvfp4_dequantize, nvfp4_quantize  # noqa: E402
from kernels.backends.fp8_act_quant import quantize_act_fp8  # noqa: E402
from kernels.backends.weight_decode import decode_nvfp4_to_fp8, fp8_row_shift  # noqa: E402


def ws(g, x, packed, scale, shift, col_scale, bias, cfg):
    q, xs = getattr(g, "quantize", quantize_act_fp8)(x)  # a probe with its own K order quantizes itself
    y = torch.empty((x.shape[0], packed.shape[0]), dtype=torch.bfloat16, device=x.device)
    g.launch(q, xs, packed, scale, shift, col_scale, bias, y, *cfg)
    return y


def run_shape(g, name: str, m: int, n: int, k: int, cfgs: list, gen: torch.Generator) -> dict:
    w = torch.randn(n, k, generator=gen, device="cuda") / k**0.5
    packed, scale, gs = nvfp4_quantize(w)
    shift = fp8_row_shift(scale)
    col_scale = (gs / shift).contiguous()
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16) * 0.1
    x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
    wd = nvfp4_dequantize(packed, scale, gs, dtype=torch.float64)
    ref = x.double() @ wd.T + bias.double()
    wb = wd.to(torch.bfloat16)

    def err(y):
        return ((y.double() - ref).norm() / ref.norm()).item()

    row = {"name": name, "m": m, "n": n, "k": k, "us": {}, "err": {}}
    with autotune.tuning_enabled():
        row["err"]["w4a8"] = err(fp4_linear(x, packed, scale, gs, bias, "w4a8", shift))
    row["us"]["bf16"] = 1000 * autotune.gpu_time_ms(lambda: F.linear(x, wb, bias))
    row["us"]["w4a8"] = 1000 * autotune.gpu_time_ms(lambda: fp4_linear(x, packed, scale, gs, bias, "w4a8", shift))
    row["us"]["act_quant"] = 1000 * autotune.gpu_time_ms(lambda: quantize_act_fp8(x))
    w8, cs8 = decode_nvfp4_to_fp8(packed, scale, gs, row_shift=shift)
    q0, xs0 = quantize_act_fp8(x)
    row["us"]["fp8_gemm"] = 1000 * autotune.gpu_time_ms(
        lambda: torch._scaled_mm(
            q0, w8.t(), scale_a=xs0[:, None], scale_b=cs8[None, :], bias=bias, out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
    )  # fmt: skip
    codes = getattr(g, "prepare_codes", lambda p: p)(packed)  # a probe's load-time code layout
    for cfg in cfgs:
        key = "ws_" + "/".join(map(str, cfg))
        try:
            y = ws(g, x, codes, scale, shift, col_scale, bias, cfg)
            torch.cuda.synchronize()
            row["err"][key] = err(y)
            row["us"][key] = 1000 * autotune.gpu_time_ms(
                lambda cfg=cfg: ws(g, x, codes, scale, shift, col_scale, bias, cfg)
            )
        except Exception as e:  # a config that does not fit is reported, the others still run
            row["err"][key] = repr(e)[:300]
            print("FAIL", key, repr(e)[:300], flush=True)
    return row


def main() -> None:
    autotune.load_shipped_configs()
    shapes = [(s.split(":")[0], *[int(v) for v in s.split(":")[1:]]) for s in sys.argv[1].split(",")]
    cfgs = [tuple(int(v) for v in c.split("/")) for c in sys.argv[2].split(",")]
    g = importlib.import_module(sys.argv[3] if len(sys.argv) > 3 else "w4a8_ws_gluon")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, m, n, k in shapes:
        row = run_shape(g, name, m, n, k, cfgs, gen)
        us = row["us"]
        print(
            f"{name} M={m} N={n} K={k}: bf16 {us['bf16']:.1f} us, w4a8 {us['w4a8']:.1f}, "
            f"fp8_gemm {us['fp8_gemm']:.1f}, act_quant {us['act_quant']:.1f}",
            flush=True,
        )
        for key, v in sorted(us.items(), key=lambda t: t[1]):
            if key.startswith("ws"):
                print(f"   {key:28s} {v:8.1f} us  vs bf16 {us['bf16'] / v:.3f}x  err {row['err'][key]:.5f}")
        out["rows"].append(row)
        json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "ws_probe.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
