"""End-to-end FLUX.1-dev through ComfyUI itself: s/step, VRAM, load, warmup, compile, accuracy.

  python tools/bench_e2e.py --comfyui /path/to/ComfyUI --workdir /tmp/e2e --out e2e.json --plot e2e.png
  # other memory managers (a separate process each; ComfyUI's own CLI flags):
  python tools/bench_e2e.py ... --comfy-args="--disable-dynamic-vram" --configs w4a8,fp8_resident
  # small CPU dry run of the whole path:
  python tools/bench_e2e.py ... --comfy-args=--cpu --blocks 1,1 --size 256 --configs bf16,reference

Files (made once per workdir, in its models folder): bf16 FLUX.1-dev with random weights
(``make_synthetic_flux.py``: linears N(0, 1/fan_in)), its NVFP4 build (``all-linear`` preset,
ComfyUI-native layout, so ComfyUI's own loader reads the same weights) and a rank-32 LoRA on
every attention/MLP linear. Conditioning is random (T5 context N(0,1) [1, 512, 4096], pooled
N(0,1) [1, 768], guidance 3.5), noise from the KSampler seed: every configuration sees the same.

A configuration is ``<model>[+compile][+lora]``; ``<model>``: ``bf16`` (ComfyUI UNETLoader),
``comfy-fp8`` (UNETLoader ``fp8_e4m3fn_fast``: ComfyUI's own W8A8), ``comfy-nvfp4`` (UNETLoader on
the NVFP4 file: ComfyUI's own NVFP4 path) or a backend of this pack's loader (``auto``, ``w4a8``,
``fp8_resident``, ``w4a16``, ``reference``; with the NVFP4 Warmup node). ``+compile`` adds
ComfyUI's TorchCompileModel (inductor), ``+lora`` LoraLoaderModelOnly. Each runs, through
ComfyUI's executor, a timing prompt (``--steps`` steps, euler/simple, cfg 1: one forward a step)
and a 4-step accuracy prompt (latent cosine/PSNR vs ``bf16`` of the same run, or of the
workdir's saved reference); ``+lora`` runs a third prompt at another strength (recompiles);
``--cfg-check 3.5`` runs the timing prompt at that cfg on the pack's compiled configurations
(graphs compiled by the CFG change, s/step with cond and uncond; not on ComfyUI's own
configurations, where the batch-2 call recompiles the whole model).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import json
import math
import os
import pathlib
import statistics
import sys
import time

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

BF16_FILE = "flux1-dev-synthetic-bf16.safetensors"
NVFP4_FILE = "flux1-dev-synthetic-nvfp4.safetensors"
LORA_FILE = "flux1-dev-synthetic-lora-r32.safetensors"
LORA_RANK = 32
LORA_LAYERS = ("img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj", "img_mlp.0", "img_mlp.2",
               "txt_mlp.0", "txt_mlp.2", "linear1", "linear2")  # fmt: skip
PACK_BACKENDS = ("auto", "w4a8", "fp8_resident", "w4a16", "reference")
ACCURACY_STEPS = 4


# ----------------------------------------------------------------------------- files


def prepare_files(models: pathlib.Path, blocks: tuple[int, int], device: str) -> dict:
    """Write the bf16, NVFP4 and LoRA files if missing; returns what was made and how long it took."""
    from make_synthetic_flux import write_synthetic_flux

    from kernels.formats.build import build_checkpoint

    unet, loras = models / "diffusion_models", models / "loras"
    unet.mkdir(parents=True, exist_ok=True)
    loras.mkdir(parents=True, exist_ok=True)
    made = {}
    if not (unet / BF16_FILE).exists():
        t = time.perf_counter()
        params = write_synthetic_flux(unet / BF16_FILE, double_blocks=blocks[0], single_blocks=blocks[1], device=device)
        made["bf16_write_s"], made["params"] = time.perf_counter() - t, params
    if not (unet / NVFP4_FILE).exists():
        t = time.perf_counter()
        build_checkpoint(unet / BF16_FILE, unet / NVFP4_FILE, preset="all-linear", device=device)
        made["nvfp4_build_s"] = time.perf_counter() - t
    if not (loras / LORA_FILE).exists():
        write_lora(unet / BF16_FILE, loras / LORA_FILE, device)
    made["bytes"] = {f: (unet / f).stat().st_size for f in (BF16_FILE, NVFP4_FILE)}
    return made


def write_lora(base: pathlib.Path, out: pathlib.Path, device: str) -> None:
    """Rank-32 LoRA (BFL key style ``diffusion_model.<layer>.lora_A/B.weight``, alpha 32) on every
    block attention/MLP linear; ``B`` is scaled so the branch changes a layer's output by ~5%."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    gen = torch.Generator(device).manual_seed(1)
    tensors = {}
    with safe_open(str(base), "pt") as f:
        for key in f.keys():
            layer = key[: -len(".weight")]
            if not key.endswith(".weight") or not layer.endswith(LORA_LAYERS):
                continue
            n, k = f.get_slice(key).get_shape()
            a = torch.randn(LORA_RANK, k, generator=gen, device=device) / k**0.5
            b = torch.randn(n, LORA_RANK, generator=gen, device=device) * (0.05 / LORA_RANK**0.5)
            tensors[f"diffusion_model.{layer}.lora_A.weight"] = a.to(torch.bfloat16).cpu()
            tensors[f"diffusion_model.{layer}.lora_B.weight"] = b.to(torch.bfloat16).cpu()
            tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(float(LORA_RANK))
    save_file(tensors, str(out))


def evict_from_page_cache(path: pathlib.Path) -> bool:
    """Ask the kernel to drop ``path`` from the page cache, so a load reads the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- measurement nodes

RECORD: dict = {"forwards": [], "outputs": None, "latent": None, "gpu_probe": False, "host_probe": False}
GPU_PROBE_AT = 3  # the model call (0-based) before which the GPU-time probe runs in a timing prompt


@functools.cache
def _pack_autotune():
    return next(m for name, m in sys.modules.items() if name.endswith("kernels.autotune") and hasattr(m, "stats"))


class PackKernelCompiles:
    """Counts Triton JIT compilations of this pack's kernels (a Triton runtime hook)."""

    count = 0
    names: list[str] = []

    @classmethod
    def install(cls) -> None:
        import triton

        def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
            if ".backends." in fn.module or fn.module.startswith("kernels"):
                cls.count += 1
                cls.names.append(f"{fn.name} {repr}"[:400])
            return False

        triton.knobs.runtime.jit_post_compile_hook = hook


def _snapshot() -> dict:
    import torch
    from torch._dynamo.utils import counters

    used = 0
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        used = total - free
    return {
        "t": time.perf_counter(),
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "pack_compiles": PackKernelCompiles.count,
        "pack_tunings": _pack_autotune().stats["tuned"],
        "device_used": used,
    }


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_forward(apply_model, params):
    """``model_function_wrapper``: records GPU-synchronized start/end of each model call; in a
    timing prompt, one extra probe call first measures the forward's GPU time (:func:`gpu_probe`)."""

    def forward():
        return apply_model(params["input"], params["timestep"], **params["c"])

    probe = None
    if RECORD["gpu_probe"] and len(RECORD["forwards"]) == GPU_PROBE_AT:
        probe = gpu_probe(forward)
        if RECORD["host_probe"]:
            probe["host"] = host_probe(forward)
            probe["probe_wall_s"] += probe["host"].pop("probe_wall_s")
    _sync()
    before = _snapshot()
    out = forward()
    enqueued = time.perf_counter()  # the host has launched the whole call (if nothing inside waits for the GPU)
    _sync()
    RECORD["forwards"].append({"before": before, "enqueued": enqueued, "after": _snapshot(), "probe": probe})
    if RECORD["outputs"] is not None:
        RECORD["outputs"].append(out.float().cpu())
    return out


TOP_KERNELS = 40  # the probe keeps the GPU time of this many kernels (by name) with the most of it


def gpu_probe(forward) -> dict:
    """GPU time of one forward with the host taken out: the summed device time of every kernel
    and copy it ran (CUPTI through ``torch.profiler``; one stream, so nothing overlaps). This is
    what the step would take if the host launched instantly; the wall time shows what the host
    adds on this machine. (Letting the GPU sleep while the host enqueues does not work: a FLUX
    forward has more launches than CUDA's queue holds.)"""
    import torch

    if not torch.cuda.is_available():
        return {"valid": False, "gpu_s": None, "kernels": 0, "probe_wall_s": 0.0}
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    _sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        _sync()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ms_by_name: dict[str, float] = {}
    calls_by_name: dict[str, int] = {}
    for e in events:
        name = e.name[:160]
        ms_by_name[name] = ms_by_name.get(name, 0.0) + e.time_range.elapsed_us() / 1e3
        calls_by_name[name] = calls_by_name.get(name, 0) + 1
    top = sorted(ms_by_name, key=lambda name: -ms_by_name[name])[:TOP_KERNELS]
    timeline = timeline_stats([(e.time_range.start, e.time_range.end, e.name[:80]) for e in events])
    return {"valid": bool(events), "gpu_s": sum(ms_by_name.values()) / 1e3, "kernels": len(events),
            "top_kernels_ms": [[name, round(ms_by_name[name], 3), calls_by_name[name]] for name in top],
            "timeline": timeline, "probe_wall_s": time.perf_counter() - t0}  # fmt: skip


LONG_GAP_US = 10.0  # an idle gap this long between two kernels means the GPU waited for the host
LONGEST_GAPS = 12  # how many of the longest gaps the probe names (the kernels on either side)


def _long_gaps(kernels_us: list[tuple[float, float, str]]) -> tuple[float, list[tuple[float, float, str, str]]]:
    """The idle time between sorted kernels and the gaps of at least :data:`LONG_GAP_US` as
    ``(start, end, kernel before, kernel after)`` (before: the kernel that ended last)."""
    ordered = sorted(kernels_us)
    idle = 0.0
    gaps: list[tuple[float, float, str, str]] = []
    busy_until, last = ordered[0][1], ordered[0][2]
    for start, end, name in ordered[1:]:
        gap = start - busy_until
        if gap > 0:
            idle += gap
            if gap >= LONG_GAP_US:
                gaps.append((busy_until, start, last, name))
        if end >= busy_until:
            busy_until, last = end, name
    return idle, gaps


def _longest(gaps: list[tuple[float, float, str, str]]) -> list[tuple[float, float, str, str]]:
    """The :data:`LONGEST_GAPS` longest of :func:`_long_gaps`' gaps, longest first."""
    return sorted(gaps, key=lambda g: g[0] - g[1])[:LONGEST_GAPS]


def timeline_stats(kernels_us: list[tuple[float, float, str]]) -> dict:
    """Where a call's GPU time went, from its kernels' (start, end, name), times in microseconds:
    the span from the first start to the last end, the idle time inside it (the span minus the
    union of the kernels), the part of that idle time in gaps of at least :data:`LONG_GAP_US` (the
    GPU waiting for the host's launches; shorter gaps are the launch latency between queued
    kernels), and the longest gaps as ``[us, kernel before, kernel after]``."""
    if not kernels_us:
        return {"span_s": 0.0, "idle_s": 0.0, "idle_in_long_gaps_s": 0.0, "long_gaps": 0, "longest_gaps": []}
    idle, gaps = _long_gaps(kernels_us)
    return {"span_s": (max(k[1] for k in kernels_us) - min(k[0] for k in kernels_us)) / 1e6, "idle_s": idle / 1e6,
            "idle_in_long_gaps_s": sum(g[1] - g[0] for g in gaps) / 1e6, "long_gaps": len(gaps),
            "longest_gaps": [[round(g[1] - g[0], 1), g[2], g[3]] for g in _longest(gaps)]}  # fmt: skip


HOST_TOP = 30  # host events (by name) with the most time that the host probe keeps
FORWARD_MARK = "nvfp4_bench_forward"


def host_probe(forward) -> dict:
    """Where the host keeps the GPU waiting in one forward: profiled with CPU events too (aten
    ops, Dynamo's cache lookup, the compiled graph's call, CUDA runtime calls), which slows the
    host, so only the structure counts here, not the times (:func:`host_stats`)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if not torch.cuda.is_available():
        return {"probe_wall_s": 0.0}
    t0 = time.perf_counter()
    _sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function(FORWARD_MARK):
            forward()
        _sync()
    gpu, cpu, mark = [], [], None
    for e in prof.events():
        span = (e.time_range.start, e.time_range.end, e.name[:100])
        if e.device_type == torch.autograd.DeviceType.CUDA:
            if not getattr(e, "is_user_annotation", False):  # (a record_function's span on the GPU timeline)
                gpu.append(span)
        elif e.name == FORWARD_MARK:
            mark = span
        else:
            cpu.append(span)
    stats = host_stats(gpu, cpu, mark) if gpu and mark else {}
    return {**stats, "probe_wall_s": time.perf_counter() - t0}


def host_stats(gpu_us: list[tuple[float, float, str]], cpu_us: list[tuple[float, float, str]],
               forward_us: tuple[float, float, str]) -> dict:  # fmt: skip
    """From one profiled forward (microseconds): ``lead_us``, the host time from the call to the
    first kernel (the GPU idles throughout: guards, input checks, wrappers); ``cpu_top``, host
    events by total time ``[name, ms, count]`` (nested events are counted in each); ``gap_pairs``,
    the long GPU gaps grouped by the kernels either side ``[before, after, count, total us]``;
    ``gap_host``, for the longest gaps the innermost host events running during them ``[us,
    before, after, [[event, us], ...]]``."""
    first_kernel = min(g[0] for g in gpu_us)
    inside = [c for c in cpu_us if c[0] >= forward_us[0] and c[1] <= forward_us[1]]
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for start, end, name in inside:
        total[name] = total.get(name, 0.0) + end - start
        count[name] = count.get(name, 0) + 1
    top = sorted(total, key=lambda n: -total[n])[:HOST_TOP]
    _, gaps = _long_gaps(gpu_us)
    pairs: dict[tuple[str, str], list[float]] = {}
    for start, end, before, after in gaps:
        entry = pairs.setdefault((before, after), [0, 0.0])
        entry[0] += 1
        entry[1] += end - start
    gap_pairs = sorted(([b, a, n, round(us, 1)] for (b, a), (n, us) in pairs.items()), key=lambda p: -p[3])
    gap_host = []
    for start, end, before, after in _longest(gaps):
        running = sorted((c for c in inside if c[0] < end and c[1] > start), key=lambda c: c[1] - c[0])[:4]
        gap_host.append([round(end - start, 1), before, after, [[c[2], round(c[1] - c[0], 1)] for c in running]])
    return {"lead_us": round(first_kernel - forward_us[0], 1),
            "cpu_top": [[n, round(total[n] / 1e3, 3), count[n]] for n in top],
            "gap_pairs": gap_pairs[:LONGEST_GAPS], "gap_host": gap_host}  # fmt: skip


class BenchTimer:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "wrap"
    CATEGORY = "benchmark"

    def wrap(self, model):
        m = model.clone()
        m.set_model_unet_function_wrapper(timed_forward)
        return (m,)


class BenchConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "tokens": ("INT", {"default": 512}),
                             "guidance": ("FLOAT", {"default": 3.5})}}  # fmt: skip

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "benchmark"

    def make(self, seed, tokens, guidance):
        import torch

        g = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, tokens, 4096, generator=g)
        pooled = torch.randn(1, 768, generator=g)
        return ([[cond, {"pooled_output": pooled, "guidance": guidance}]],)


class BenchSink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "keep"
    OUTPUT_NODE = True
    CATEGORY = "benchmark"

    def keep(self, samples, tag):
        RECORD["latent"] = samples["samples"].float().cpu()
        return {}


EXTRA_NODES = {"NVFP4BenchTimer": BenchTimer, "NVFP4BenchConditioning": BenchConditioning, "NVFP4BenchSink": BenchSink}

NODE_TIMES: dict[str, list[float]] = {}


def time_node_method(cls: type, method: str, label: str) -> None:
    """Record wall times of ``cls.method`` (a V1 node's FUNCTION) under ``label``."""
    original = getattr(cls, method)

    def timed(self, *args, **kwargs):
        _sync()
        start = time.perf_counter()
        result = original(self, *args, **kwargs)
        _sync()
        NODE_TIMES.setdefault(label, []).append(time.perf_counter() - start)
        return result

    setattr(cls, method, timed)


# ----------------------------------------------------------------------------- prompts


def parse_config(name: str) -> dict:
    base, *flags = name.split("+")
    if base not in ("bf16", "comfy-fp8", "comfy-nvfp4", *PACK_BACKENDS) or set(flags) - {"compile", "lora"}:
        raise SystemExit(f"unknown configuration {name!r}")
    return {"name": name, "base": base, "compile": "compile" in flags, "lora": "lora" in flags,
            "pack": base in PACK_BACKENDS}  # fmt: skip


def build_prompt(cfg: dict, size: tuple[int, int], steps: int, tag: str, lora_strength: float = 1.0,
                 tokens: int = 512, cfg_scale: float = 1.0) -> dict:  # fmt: skip
    w, h = size
    p: dict = {}
    if cfg["pack"]:
        p["1"] = {"class_type": "NVFP4FluxLoader", "inputs": {"model_name": NVFP4_FILE, "backend": cfg["base"],
                                                               "compute_dtype": "bf16"}}  # fmt: skip
    else:
        dtype = "fp8_e4m3fn_fast" if cfg["base"] == "comfy-fp8" else "default"
        name = NVFP4_FILE if cfg["base"] == "comfy-nvfp4" else BF16_FILE
        p["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": dtype}}
    model = ["1", 0]
    if cfg["lora"]:
        p["2"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": LORA_FILE,
                                                                   "strength_model": lora_strength}}  # fmt: skip
        model = ["2", 0]
    if cfg["pack"]:
        p["3"] = {"class_type": "NVFP4Warmup", "inputs": {"model": model, "width": w, "height": h, "batch_size": 1,
                                                           "text_tokens": tokens}}  # fmt: skip
        model = ["3", 0]
    if cfg["compile"]:
        p["4"] = {"class_type": "TorchCompileModel", "inputs": {"model": model, "backend": "inductor"}}
        model = ["4", 0]
    p["5"] = {"class_type": "NVFP4BenchTimer", "inputs": {"model": model}}
    p["6"] = {"class_type": "NVFP4BenchConditioning", "inputs": {"seed": 7, "tokens": tokens, "guidance": 3.5}}
    p["7"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": w, "height": h, "batch_size": 1}}
    p["8"] = {"class_type": "KSampler", "inputs": {
        "model": ["5", 0], "seed": 42, "steps": steps, "cfg": cfg_scale, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["7", 0], "denoise": 1.0}}  # fmt: skip
    p["9"] = {"class_type": "NVFP4BenchSink", "inputs": {"samples": ["8", 0], "tag": tag}}
    return p


# ----------------------------------------------------------------------------- one configuration


def free_everything(comfy) -> None:
    import comfy.model_management as mm
    import torch

    comfy.reset()
    mm.unload_all_models()
    mm.cleanup_models()
    gc.collect()
    torch._dynamo.reset()
    mm.soft_empty_cache()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def loaded_weight_bytes() -> int:
    """Bytes of model weights ComfyUI reports on the GPU (``loaded_size`` of each loaded model)."""
    import comfy.model_management as mm

    return int(sum(lm.model.loaded_size() for lm in mm.current_loaded_models if lm.model is not None))


def cosine_psnr(x, ref) -> dict:
    import torch

    x, ref = x.flatten().double(), ref.flatten().double()
    cos = torch.nn.functional.cosine_similarity(x, ref, dim=0).item()
    mse = torch.mean((x - ref) ** 2).item()
    span = (ref.max() - ref.min()).item()
    psnr = float("inf") if mse == 0 else 10 * math.log10(span**2 / mse)
    return {"cosine": cos, "psnr_db": psnr, "nan": bool(torch.isnan(x).any())}


def step_stats(forwards: list[dict], base: dict) -> dict:
    """Step times and compile counts of one prompt's model calls; counters relative to ``base``."""
    ends = [f["after"]["t"] for f in forwards]
    probes = [f.get("probe") for f in forwards]
    steps = [b - a - (p["probe_wall_s"] if p else 0.0) for a, b, p in zip(ends, ends[1:], probes[1:], strict=False)]
    probe = next((p for p in probes if p), None)
    later = forwards[1:]
    first = forwards[0]["after"]["t"] - forwards[0]["before"]["t"]
    f0b, f0a, last = forwards[0]["before"], forwards[0]["after"], forwards[-1]["after"]
    return {
        "s_per_step": statistics.median(steps) if steps else None,
        "steps_timed": len(steps),
        "step_times": steps,
        "gpu_s_per_step": probe["gpu_s"] if probe and probe["valid"] else None,
        # one model call, GPU idle at its start: its wall time, and how long the host took to launch it
        # (launch ~ call wall: the call is bound by the host); the rest of a step is the sampler's
        "forward_s": statistics.median(f["after"]["t"] - f["before"]["t"] for f in later) if later else None,
        "host_launch_s": statistics.median(f["enqueued"] - f["before"]["t"] for f in later) if later else None,
        "gpu_probe": probe,
        "first_step_s": first,
        "graphs_first_step": f0a["graphs"] - f0b["graphs"],
        "graph_breaks": last["graph_breaks"] - base["graph_breaks"],
        "graphs_total": last["graphs"] - base["graphs"],
        "recompiles_after_first_step": last["graphs"] - f0a["graphs"],
        "pack_kernel_compiles_first_step": f0a["pack_compiles"] - f0b["pack_compiles"],
        "pack_tunings_first_step": f0a["pack_tunings"] - f0b["pack_tunings"],
        "pack_kernel_compiles_later_steps": last["pack_compiles"] - f0a["pack_compiles"],
        "pack_kernels_compiled_first_step": PackKernelCompiles.names[f0b["pack_compiles"] : f0a["pack_compiles"]],
        "peak_device_used": max(f["after"]["device_used"] for f in forwards),
    }


def run_config(comfy, cfg: dict, size, steps: int, tokens: int, references: dict[str, dict],
               files: dict[str, pathlib.Path], cfg_check: float = 0.0) -> dict:  # fmt: skip
    import torch

    free_everything(comfy)
    NODE_TIMES.clear()
    checkpoint = files[BF16_FILE if cfg["base"] in ("bf16", "comfy-fp8") else NVFP4_FILE]
    evicted = evict_from_page_cache(checkpoint)
    result: dict = {"config": cfg["name"], "page_cache_evicted": evicted}
    RECORD.update(forwards=[], outputs=[], gpu_probe=True)
    base = _snapshot()
    start = time.perf_counter()
    comfy.run(build_prompt(cfg, size, steps, tag=f"{cfg['name']}-timing", tokens=tokens))
    RECORD["gpu_probe"] = False
    result["timing_prompt_wall_s"] = time.perf_counter() - start
    result["time_to_first_step_s"] = RECORD["forwards"][0]["after"]["t"] - start
    result.update(step_stats(RECORD["forwards"], base))
    result["weight_vram_bytes"] = loaded_weight_bytes()
    if torch.cuda.is_available():
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    result["node_times_s"] = dict(NODE_TIMES)

    if steps != ACCURACY_STEPS:  # (an identical prompt would be answered from ComfyUI's cache)
        RECORD.update(forwards=[], outputs=[])
        base = _snapshot()
        comfy.run(build_prompt(cfg, size, ACCURACY_STEPS, tag=f"{cfg['name']}-accuracy", tokens=tokens))
    acc_steps = step_stats(RECORD["forwards"], base)
    keys = ("graphs_total", "graph_breaks", "pack_kernel_compiles_first_step", "pack_tunings_first_step")
    result["accuracy_prompt"] = {k: acc_steps[k] for k in keys}
    outputs, latent = RECORD["outputs"], RECORD["latent"]
    for ref_name, ref in references.items():  # bf16 eager, and bf16 compiled where it ran
        label = "vs_" + ref_name.replace("+", "_")
        result[label + "_latent"] = cosine_psnr(latent, ref["latent"])
        result[label + "_per_step"] = [cosine_psnr(o, r) for o, r in zip(outputs, ref["outputs"], strict=False)]
    result["_latent"], result["_outputs"] = latent, outputs
    from torch._dynamo.utils import counters

    result["graph_break_reasons_in_process"] = {k[:300]: v for k, v in counters["graph_break"].items()}

    if cfg_check and cfg["compile"] and cfg["pack"]:
        result["cfg_prompt"] = cfg_prompt_stats(comfy, cfg, size, steps, tokens, cfg_check)
    if cfg["lora"]:
        RECORD.update(forwards=[], outputs=None, gpu_probe=True)
        base = _snapshot()
        comfy.run(build_prompt(cfg, size, steps, tag=f"{cfg['name']}-strength", lora_strength=0.5, tokens=tokens))
        RECORD["gpu_probe"] = False
        s = step_stats(RECORD["forwards"], base)
        result["strength_change"] = {"graphs_compiled": s["graphs_total"], "graph_breaks": s["graph_breaks"],
                                     "s_per_step": s["s_per_step"], "gpu_s_per_step": s["gpu_s_per_step"],
                                     "first_step_s": s["first_step_s"]}  # fmt: skip
    return result


def cfg_prompt_stats(comfy, cfg: dict, size, steps: int, tokens: int, cfg_scale: float) -> dict:
    """The timing prompt again at ``cfg_scale`` > 1 (cond and uncond each step) on the compiled model
    of the earlier prompts: graphs compiled, s/step (mean over steps 2..N) and model calls a step
    (2 where the warmup's hook runs cond and uncond separately, 1 where ComfyUI batches them)."""
    RECORD.update(forwards=[], outputs=None, gpu_probe=False)
    base = _snapshot()
    comfy.run(build_prompt(cfg, size, steps, tag=f"{cfg['name']}-cfg", tokens=tokens, cfg_scale=cfg_scale))
    forwards = RECORD["forwards"]
    per_step = len(forwards) // steps
    ends = [f["after"]["t"] for f in forwards[per_step - 1 :: per_step]]
    last = forwards[-1]["after"]
    return {"cfg": cfg_scale, "model_calls_per_step": per_step,
            "s_per_step_mean": (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None,
            "first_step_s": ends[0] - forwards[0]["before"]["t"],
            "graphs_compiled": last["graphs"] - base["graphs"],
            "graph_breaks": last["graph_breaks"] - base["graph_breaks"],
            "pack_kernel_compiles": last["pack_compiles"] - base["pack_compiles"]}  # fmt: skip


# ----------------------------------------------------------------------------- report


def environment(comfyui: str, comfy_args: list[str]) -> dict:
    import comfy.memory_management
    import torch

    env = {"torch": torch.__version__, "comfyui_path": comfyui, "comfy_args": comfy_args,
           "dynamic_vram": bool(getattr(comfy.memory_management, "aimdo_enabled", False))}  # fmt: skip
    try:
        import comfyui_version

        env["comfyui"] = comfyui_version.__version__
    except ImportError:
        pass
    for mod in ("triton", "comfy_kitchen", "comfy_aimdo"):
        try:
            env[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):  # (comfy_kitchen has no __version__)
            try:
                env[mod] = importlib.metadata.version(mod.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                env[mod] = None
    try:  # which comfy-kitchen backends ComfyUI left on (its CUDA one needs the wheel's compiled extension)
        import comfy.quant_ops  # noqa: F401  (disables backends per ComfyUI's flags)
        import comfy_kitchen

        env["comfy_kitchen_backends"] = {
            name: {"available": info.get("available"), "disabled": info.get("disabled"),
                   "unavailable_reason": info.get("unavailable_reason")}
            for name, info in comfy_kitchen.list_backends().items()
        }  # fmt: skip
    except (ImportError, AttributeError):
        env["comfy_kitchen_backends"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def print_table(results: dict[str, dict]) -> None:
    base_eager = results.get("bf16", {}).get("s_per_step")
    base_comp = results.get("bf16+compile", {}).get("s_per_step")
    comfy_nvfp4 = results.get("comfy-nvfp4+compile", results.get("comfy-nvfp4", {})).get("s_per_step")
    cols = f"{'config':28s} {'s/step':>8s} {'GPU s':>7s} {'call s':>7s} {'launch':>7s} {'x bf16':>7s} " \
           f"{'x bf16c':>7s} {'x cnvfp4':>8s} {'1st step':>8s} {'weights GB':>10s} {'peak GB':>8s} {'cos':>7s} " \
           f"{'PSNR':>6s} {'cos(c)':>7s}"  # fmt: skip
    print(cols)
    for name, r in results.items():
        s = r.get("s_per_step")
        ratio = lambda b, s=s: f"{b / s:7.2f}" if b and s else "      -"  # noqa: E731
        acc = r.get("vs_bf16_latent", {})
        gpu = r.get("gpu_s_per_step")
        call, launch = r.get("forward_s"), r.get("host_launch_s")
        print(f"{name:28s} {s or float('nan'):8.4f} {gpu or float('nan'):7.4f} {call or float('nan'):7.4f} "
              f"{launch or float('nan'):7.4f} {ratio(base_eager)} {ratio(base_comp)} "
              f"{ratio(comfy_nvfp4):>8s} {r['first_step_s']:8.2f} {r['weight_vram_bytes'] / 1e9:10.2f} "
              f"{max(r.get('peak_allocated_bytes', 0), r['peak_device_used']) / 1e9:8.2f} "
              f"{acc.get('cosine', float('nan')):7.4f} {acc.get('psnr_db', float('nan')):6.1f} "
              f"{r.get('vs_bf16_compile_latent', {}).get('cosine', float('nan')):7.4f}")  # fmt: skip


def plot(results: dict[str, dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 1.8))
    ax1.barh(names, [results[n]["s_per_step"] or 0 for n in names], color="tab:blue", label="wall (median)")
    ax1.barh(names, [results[n].get("gpu_s_per_step") or 0 for n in names], height=0.35, color="tab:orange",
             label="GPU kernel time")  # fmt: skip
    ax1.set_xlabel("seconds per step")
    ax1.invert_yaxis()
    ax1.legend(loc="lower right")
    ax2.barh(names, [results[n]["weight_vram_bytes"] / 1e9 for n in names], color="tab:green", label="weights")
    ax2.barh(names, [results[n].get("peak_allocated_bytes", 0) / 1e9 for n in names], color="none",
             edgecolor="black", label="peak allocated")  # fmt: skip
    ax2.set_xlabel("GB")
    ax2.invert_yaxis()
    ax2.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, help="ComfyUI checkout (0.33.0 measured here)")
    ap.add_argument("--workdir", required=True, type=pathlib.Path, help="model files, caches, ComfyUI home")
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--plot", default=None, help="PNG: s/step and VRAM per configuration")
    ap.add_argument("--configs", default="bf16,bf16+compile,comfy-fp8,comfy-nvfp4,w4a8,w4a8+compile,fp8_resident,"
                    "fp8_resident+compile,w4a16,w4a16+compile,w4a8+compile+lora")  # fmt: skip
    ap.add_argument("--comfy-args", default="", help="ComfyUI CLI flags, e.g. --disable-dynamic-vram")
    ap.add_argument("--steps", type=int, default=10, help="timing prompt steps (median over steps 2..N)")
    ap.add_argument("--size", default="1024", help="WxH or one number")
    ap.add_argument("--tokens", type=int, default=512, help="text tokens (512: FLUX.1-dev's T5 length)")
    ap.add_argument("--blocks", default="19,38", help="double,single blocks (19,38 is FLUX.1-dev)")
    ap.add_argument("--prepare-only", action="store_true", help="write the model files, then stop")
    ap.add_argument("--fresh-caches", action="store_true", help="empty Triton/Inductor/user caches first (cold)")
    ap.add_argument("--cfg-check", type=float, default=0.0,
                    help="also time the timing prompt at this cfg (> 1) on the pack's compiled configs")  # fmt: skip
    ap.add_argument(
        "--probe-host",
        action="store_true",
        help="also profile one forward with host events: where the host keeps the GPU waiting",
    )
    args = ap.parse_args()
    size = tuple(int(v) for v in (args.size.split("x") if "x" in args.size else [args.size] * 2))
    blocks = tuple(int(v) for v in args.blocks.split(","))
    configs = [parse_config(c) for c in args.configs.split(",") if c]
    work = args.workdir.resolve()
    caches = {"TRITON_CACHE_DIR": work / "triton-cache", "TORCHINDUCTOR_CACHE_DIR": work / "inductor-cache"}
    if args.fresh_caches:
        import shutil

        for d in [*caches.values(), work / "home" / "user"]:
            shutil.rmtree(d, ignore_errors=True)
    cold = {k: not d.exists() for k, d in caches.items()}
    for k, d in caches.items():
        os.environ[k] = str(d)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prep = prepare_files(work / "home" / "models", blocks, device)
    print("files:", json.dumps(prep), flush=True)
    if args.prepare_only:
        return 0
    from comfy_inprocess import start_comfyui

    comfy_args = args.comfy_args.split()
    comfy = start_comfyui(args.comfyui, comfy_args, work / "home", EXTRA_NODES)
    RECORD["host_probe"] = args.probe_host
    import nodes

    for node, method, label in (("UNETLoader", "load_unet", "load"), ("NVFP4FluxLoader", "load", "load"),
                                ("NVFP4Warmup", "warmup", "warmup"), ("LoraLoaderModelOnly", "load_lora_model_only",
                                                                       "lora")):  # fmt: skip
        time_node_method(nodes.NODE_CLASS_MAPPINGS[node], method, label)
    if device == "cuda":
        PackKernelCompiles.install()
    torch._logging.set_logs(recompiles=True, graph_breaks=True)
    files = {f: work / "home" / "models" / "diffusion_models" / f for f in (BF16_FILE, NVFP4_FILE)}
    ref_path = work / f"reference-{size[0]}x{size[1]}-{args.tokens}.pt"
    references = {"bf16": torch.load(ref_path)} if ref_path.exists() else {}
    results: dict[str, dict] = {}
    out = {"environment": environment(args.comfyui, comfy_args), "caches_cold_at_start": cold, "files": prep,
           "size": size, "blocks": blocks, "steps": args.steps, "results": results}  # fmt: skip
    for cfg in configs:
        print(f"== {cfg['name']}", flush=True)
        try:
            r = run_config(comfy, cfg, size, args.steps, args.tokens, references, files, args.cfg_check)
        except Exception as exc:  # one failing configuration must not lose the others
            import traceback

            traceback.print_exc()
            results[cfg["name"]] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            continue
        latent, outputs = r.pop("_latent"), r.pop("_outputs")
        if cfg["name"] in ("bf16", "bf16+compile"):
            references[cfg["name"]] = {"latent": latent, "outputs": outputs}
            if cfg["name"] == "bf16":
                torch.save(references["bf16"], ref_path)
        results[cfg["name"]] = r
        print(json.dumps({k: v for k, v in r.items() if not k.endswith(("step_times", "_per_step"))}), flush=True)
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    ok = {k: v for k, v in results.items() if "error" not in v}
    print_table(ok)
    if args.plot and ok:
        env = out["environment"]
        plot(ok, args.plot, f"FLUX.1-dev {size[0]}x{size[1]} via ComfyUI {env.get('comfyui')} on "
             f"{env.get('gpu', 'CPU')} (torch {env['torch']}, {' '.join(comfy_args) or 'default flags'})")  # fmt: skip
    return 1 if len(ok) < len(results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
