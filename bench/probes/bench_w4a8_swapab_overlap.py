"""Session 15 probe: how much of the W4A8 swap-AB op's activation quantization is exposed at M = 512, and
what a tighter hand-over could win. Timed as tools/bench_gemm.py times (CUDA-graph replays over weight
copies larger than L2). Rows:

* ``bf16``, ``op`` (quantization + GEMM as the op runs them), ``gemm`` (pre-quantized activations);
* ``quant{W}``: the quantization alone with W warps a row; ``null``: an empty kernel (the launch floor);
* ``null+gemm``: an empty kernel that lets the GEMM launch at once (PDL): the floor of two launches;
  ``nullpdl+gemm``: the empty kernel itself launched with PDL after the previous call's GEMM;
* ``quant4+gemm``: the quantization (4 warps a row) launched plainly, the GEMM with PDL after it (the
  op of session 14); ``quant{W}pdl+gemm``: the quantization launched with PDL too (waits for the
  previous grid inside);
* ``gemm_{diag}``: the GEMM with parts removed (results are wrong; see ``_diag_modules``);
* ``fp8mm``: cuBLAS rowwise FP8 (``torch._scaled_mm``) on the same quantized activations and e4m3 copies
  of the weights (the dense FP8 GEMM alone, for reference);
* ``quant4pdl+gemm_nowait``: the GEMM's token loads do not wait for the quantization grid (results
  are wrong; the time bounds what a per-tile flag instead of ``griddepcontrol.wait`` could win).

With SWAPAB_BASELINE=path/to/another/w4a8_swapab.py also ``gemm_base`` and ``quant4pdl+gemm_base``: that
version's GEMM (``op_equal`` then also checks both GEMMs give the same bytes). JSON to $OUT/swapab_overlap.json.

  python bench/probes/bench_w4a8_swapab_overlap.py proj:512:3072:3072,qkv:512:9216:3072
"""

import importlib.util
import inspect
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from bench_gemm import bench_graph_rotated  # noqa: E402
from bench_w4a8_swapab_split import weight_copies  # noqa: E402

from kernels import fp4_linear  # noqa: E402
from kernels.backends import fp8_act_quant, w4a8_swapab  # noqa: E402


@triton.jit
def _null_kernel(p, LAUNCH_DEPENDENTS: tl.constexpr):
    if LAUNCH_DEPENDENTS:
        tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=tl.int32, is_pure=False,
                                  pack=1)  # fmt: skip


def _module_from_source(name: str, src: str):
    """A copy of the swap-AB module made from ``src``, importable under kernels.backends."""
    path = pathlib.Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"kernels.backends.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _nowait_module():
    """w4a8_swapab with the token loader's ``griddepcontrol.wait`` removed (None where it has no such loader)."""
    src = inspect.getsource(w4a8_swapab)
    old = "        _grid_dependency_wait()\n        for ki in range(num_k):\n            s = ki % STAGES"
    if src.count(old) != 1:  # not the loader structure this edits
        return None
    new = "        for ki in range(num_k):\n            s = ki % STAGES"
    return _module_from_source("w4a8_swapab_nowait", src.replace(old, new))


def quant(x: torch.Tensor, warps: int, launch_dependents: bool, launch_pdl: bool = False):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    fp8_act_quant._act_quant_kernel[(m,)](
        x, None, q, s, k, 0, x.stride(0), 0, q.stride(0), BLOCK_K=triton.next_power_of_2(k), BLOCK_R=1,
        ONE_SWEEP=True, HAS_EXTRA=False, WGMMA_K_ORDER=True, PDL=launch_dependents, num_warps=warps,
        launch_pdl=launch_pdl,
    )  # fmt: skip
    return q, s


def _diag_modules() -> tuple:
    """Diagnostics (wrong results), each a copy of the module with parts of the GEMM removed:

    * ``nodecode`` feeds the raw code words to wgmma (no decode ops); ``noalu`` also skips the table
      arithmetic: what is left is the loads, barriers and wgmmas;
    * ``noxload`` / ``nocload`` / ``noload``: the token tiles / code and scale tiles / both are loaded
      (TMA) for the first ring round only; later k-steps reuse what is in shared memory (the L2 -> SM
      traffic of the main loop removed); ``noloadnodecode``: both loads and the decode removed;
    * ``k2``: two k-steps only (launch, prologue, epilogue)."""
    src = inspect.getsource(w4a8_swapab)
    words = "a_x, a_y = _decode_words(w3, t_lo, t_hi)"
    tables = "lo, hi = _tables(sb.to(gl.int32), gl.broadcast(gl.expand_dims(shift2, 1), sb)[0])"
    xload = (
        "            mbarrier.expect(x_ready.index(s), x_desc.block_type.nbytes)\n"
        "            tma.async_copy_global_to_shared(x_desc, [off_t, ki * BK], x_ready.index(s), x_bufs.index(s))\n"
    )
    cl_start = "            if ki % 2 == 0:\n                mbarrier.expect(c_ready.index(s)"
    cl_end = "tma.async_copy_global_to_shared(c_desc, [off_n, ki * (BK // 2)], c_ready.index(s), c_bufs.index(s))\n"
    numk = "num_k = K // BK"
    if any(src.count(old) != 1 for old in (words, tables, xload, cl_start, cl_end, numk)):
        print("diagnostics skipped: the module does not have the structure they edit", flush=True)
        return ()
    a, b = src.index(cl_start), src.index(cl_end) + len(cl_end)

    def first_round_only(body: str, ring: str, bar: str) -> str:
        indented = "".join("    " + line + "\n" for line in body.splitlines())
        other = f"                mbarrier.arrive({bar}.index(s), count=1)\n"
        return f"            if ki < {ring}:\n{indented}            else:\n{other}"

    noxload = src.replace(xload, first_round_only(xload, "STAGES", "x_ready"))
    nocload = src[:a] + first_round_only(src[a:b], "CSTAGES", "c_ready") + src[b:]
    noload = nocload.replace(xload, first_round_only(xload, "STAGES", "x_ready"))
    nodecode = src.replace(words, "a_x, a_y = w3, t_lo")
    variants = {
        "nodecode": nodecode,
        "noalu": nodecode.replace(tables, "lo, hi = sb.to(gl.int32), sb.to(gl.int32)"),
        "noxload": noxload,
        "nocload": nocload,
        "noload": noload,
        "noloadnodecode": noload.replace(words, "a_x, a_y = w3, t_lo"),
        "k2": src.replace(numk, "num_k = 2"),
    }
    return tuple(_module_from_source(f"w4a8_swapab_{name}", v) for name, v in variants.items())


def run_shape(name: str, m: int, n: int, k: int, gen: torch.Generator, nowait, base, diag: tuple) -> dict:
    copies = weight_copies(n, k, gen)
    x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
    q, xs = quant(x, 4, False)
    dummy = torch.empty(1, device="cuda")

    def gemm(c, q, xs, mod=w4a8_swapab):
        return mod._launch_swapab(q, xs, c[0], c[1], c[3], c[2], None)

    def null(dependents: bool, pdl: bool = False):
        _null_kernel[(1,)](dummy, LAUNCH_DEPENDENTS=dependents, num_warps=1, launch_pdl=pdl)

    fns = {
        "bf16": lambda c: F.linear(x, c[4]),
        "op": lambda c: fp4_linear(x, c[0], c[1], c[2], None, "w4a8", c[3]),
        "gemm": lambda c: gemm(c, q, xs),
        "quant4": lambda c: quant(x, 4, False),
        "quant1": lambda c: quant(x, 1, False),
        "null": lambda c: null(False),
        "null+gemm": lambda c: (null(True), gemm(c, q, xs)),
        "nullpdl+gemm": lambda c: (null(True, True), gemm(c, q, xs)),
        "quant4+gemm": lambda c: gemm(c, *quant(x, 4, True)),
        "quant4pdl+gemm": lambda c: gemm(c, *quant(x, 4, True, True)),
        "quant1pdl+gemm": lambda c: gemm(c, *quant(x, 1, True, True)),
    }
    if nowait is not None:
        fns["quant4pdl+gemm_nowait"] = lambda c: gemm(c, *quant(x, 4, True, True), mod=nowait)
    for mod in diag:
        fns["gemm_" + mod.__name__.rsplit("_", 1)[1]] = lambda c, mod=mod: gemm(c, q, xs, mod=mod)
    if base is not None:  # the GEMM of another version of the module (SWAPAB_BASELINE)
        fns["gemm_base"] = lambda c: gemm(c, q, xs, mod=base)
        fns["quant4pdl+gemm_base"] = lambda c: gemm(c, *quant(x, 4, True, True), mod=base)
        ref_base = gemm(copies[0], q, xs, mod=base)
    ref = gemm(copies[0], *quant(x, 4, False))
    same = torch.equal(fns["op"](copies[0]), ref) and torch.equal(fns["quant4pdl+gemm"](copies[0]), ref)
    if base is not None:
        same = same and torch.equal(ref_base, gemm(copies[0], q, xs))
    ones = torch.ones((1, n), dtype=torch.float32, device="cuda")
    fp8mm = {id(c): c[4].to(torch.float8_e4m3fn) for c in copies}
    fns["fp8mm"] = lambda c: torch._scaled_mm(q, fp8mm[id(c)].t(), xs[:, None], ones, out_dtype=torch.bfloat16)
    us = {}
    for a, f in fns.items():
        try:
            us[a] = 1000 * bench_graph_rotated([lambda c=c, f=f: f(c) for c in copies])
        except Exception as e:  # a diagnostic that does not compile or launch is recorded, not fatal
            print(a, "failed:", str(e).splitlines()[0][:200], flush=True)
            us[a] = None
    return {"name": name, "m": m, "n": n, "k": k, "copies": len(copies), "op_equal": same, "us": us}


def main() -> None:
    diag = _diag_modules()
    gen = torch.Generator(device="cuda").manual_seed(0)
    nowait = _nowait_module()
    base_path = os.environ.get("SWAPAB_BASELINE")
    base = _module_from_source("w4a8_swapab_base", pathlib.Path(base_path).read_text()) if base_path else None
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    for spec in sys.argv[1].split(","):
        name, m, n, k = spec.split(":")[0], *[int(v) for v in spec.split(":")[1:]]
        row = run_shape(name, m, n, k, gen, nowait, base, diag)
        us = {a: b and round(b, 2) for a, b in row["us"].items()}
        print(name, "op_equal", row["op_equal"], us, flush=True)
        out["rows"].append(row)
        json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "swapab_overlap.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
