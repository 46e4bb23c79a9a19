"""The end-to-end benchmark (tools/bench_e2e.py): its prompts, its statistics, and (with
COMFYUI_PATH) a CPU dry run of the whole path through real ComfyUI on a 1+1-block model."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from markers import COMFYUI_PATH, requires_comfyui

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_e2e  # noqa: E402


def test_configurations_parse_and_unknown_ones_are_refused():
    cfg = bench_e2e.parse_config("w4a8+compile+lora")
    assert (cfg["base"], cfg["compile"], cfg["lora"], cfg["pack"]) == ("w4a8", True, True, True)
    assert not bench_e2e.parse_config("comfy-nvfp4")["pack"]
    with pytest.raises(SystemExit):
        bench_e2e.parse_config("w4a8+turbo")


@pytest.mark.parametrize("name", ["bf16", "comfy-fp8", "comfy-nvfp4", "w4a8+compile+lora", "fp8_resident+compile"])
def test_prompt_is_one_connected_graph_from_loader_to_sink(name):
    cfg = bench_e2e.parse_config(name)
    p = bench_e2e.build_prompt(cfg, (1024, 768), steps=10, tag="t", lora_strength=0.5, tokens=512)
    # follow the MODEL chain back from the sampler to the loader
    node, chain = p["8"]["inputs"]["model"][0], []
    while "model" in p[node]["inputs"]:
        chain.append(p[node]["class_type"])
        node = p[node]["inputs"]["model"][0]
    chain.append(p[node]["class_type"])
    expected = ["NVFP4BenchTimer"]
    expected += ["TorchCompileModel"] if cfg["compile"] else []
    expected += ["NVFP4Warmup"] if cfg["pack"] else []
    expected += ["LoraLoaderModelOnly"] if cfg["lora"] else []
    expected += ["NVFP4FluxLoader" if cfg["pack"] else "UNETLoader"]
    assert chain == expected
    assert p["7"]["inputs"]["width"] == 1024 and p["7"]["inputs"]["height"] == 768
    assert p["8"]["inputs"]["cfg"] == 1.0  # FLUX.1-dev: guidance-distilled, one forward a step


def test_step_stats_take_the_median_after_the_first_step_and_count_from_the_base():
    def snap(t, graphs=0, breaks=0, compiles=0):
        return {"t": t, "graphs": graphs, "graph_breaks": breaks, "pack_compiles": compiles, "pack_tunings": 0,
                "device_used": 7}  # fmt: skip

    base = snap(0.0, graphs=5, breaks=2)
    ends = [10.0, 10.5, 11.2, 11.6]
    forwards = [{"before": snap(0.1, 5, 2), "enqueued": 9.0, "after": snap(ends[0], 6, 2)}]
    forwards += [{"before": snap(e - 0.3, 6, 2), "enqueued": e - 0.3 + launch, "after": snap(e, 6, 2)}
                 for e, launch in zip(ends[1:], (0.2, 0.1, 0.25), strict=True)]  # fmt: skip
    s = bench_e2e.step_stats(forwards, base)
    assert s["s_per_step"] == pytest.approx(0.5) and s["steps_timed"] == 3
    # per model call after the first: its wall time and the host's launch time (medians)
    assert s["forward_s"] == pytest.approx(0.3) and s["host_launch_s"] == pytest.approx(0.2)
    assert s["first_step_s"] == pytest.approx(9.9)
    assert (s["graphs_first_step"], s["recompiles_after_first_step"], s["graphs_total"], s["graph_breaks"]) == (
        1,
        0,
        1,
        0,
    )
    assert s["gpu_s_per_step"] is None


def test_step_stats_leave_out_the_gpu_probe_and_report_its_time():
    def snap(t):
        return {"t": t, "graphs": 1, "graph_breaks": 0, "pack_compiles": 0, "pack_tunings": 0, "device_used": 7}

    probe = {"valid": True, "gpu_s": 0.12, "kernels": 900, "probe_wall_s": 0.9}
    ends = [10.0, 10.5, 11.0 + 0.9, 11.5 + 0.9]  # the third call ran the probe first (0.9 s)
    forwards = [{"before": snap(e - 0.3), "enqueued": e - 0.1, "after": snap(e), "probe": probe if i == 2 else None}
                for i, e in enumerate(ends)]  # fmt: skip
    s = bench_e2e.step_stats(forwards, snap(0.0))
    assert s["step_times"] == pytest.approx([0.5, 0.5, 0.5]) and s["gpu_s_per_step"] == 0.12
    s_invalid = bench_e2e.step_stats([{**f, "probe": f["probe"] and {**probe, "valid": False}} for f in forwards],
                                     snap(0.0))  # fmt: skip
    assert s_invalid["gpu_s_per_step"] is None


def test_timeline_stats_split_idle_time_into_launch_gaps_and_host_waits():
    # kernels (us): 0-100, 102-150 (2 us gap), an overlapping copy 140-160, 200-300 (40 us gap)
    t = bench_e2e.timeline_stats([(200.0, 300.0, "d"), (0.0, 100.0, "a"), (102.0, 150.0, "b"), (140.0, 160.0, "c")])
    assert t["span_s"] == pytest.approx(300e-6) and t["idle_s"] == pytest.approx(42e-6)
    assert t["idle_in_long_gaps_s"] == pytest.approx(40e-6) and t["long_gaps"] == 1
    assert t["longest_gaps"] == [[40.0, "c", "d"]]  # named by the kernel that ended last before it
    assert bench_e2e.timeline_stats([])["span_s"] == 0.0


def test_host_stats_time_the_lead_and_name_what_the_host_did_in_each_gap():
    gpu = [(1000.0, 1100.0, "k1"), (1300.0, 1400.0, "k2"), (1420.0, 1500.0, "k1"), (1700.0, 1750.0, "k2")]
    forward = (400.0, 1800.0, "mark")
    cpu = [(400.0, 1790.0, "Torch-Compiled Region"), (410.0, 900.0, "TorchDynamo Cache Lookup"),
           (1150.0, 1290.0, "aten::_scaled_mm"), (1200.0, 1210.0, "cudaMalloc"), (1900.0, 1950.0, "after")]  # fmt: skip
    h = bench_e2e.host_stats(gpu, cpu, forward)
    assert h["lead_us"] == 600.0  # call at 400, first kernel at 1000
    top = {name: (ms, n) for name, ms, n in h["cpu_top"]}
    assert top["TorchDynamo Cache Lookup"] == (pytest.approx(0.49), 1) and "after" not in top
    # gaps: k1 -> k2 twice (200 us, 200 us), k2 -> k1 (20 us)
    assert h["gap_pairs"][0] == ["k1", "k2", 2, 400.0] and h["gap_pairs"][1] == ["k2", "k1", 1, 20.0]
    first = h["gap_host"][0]
    assert first[:3] == [200.0, "k1", "k2"]
    names = [n for n, _ in first[3]]
    assert names[0] == "cudaMalloc" and "aten::_scaled_mm" in names  # innermost first


def test_cfg_check_prompt_counts_model_calls_per_step_and_times_steps(monkeypatch):
    """Two model calls a step (the warmup's hook at cfg > 1): s/step from each step's last call."""
    p = bench_e2e.build_prompt(bench_e2e.parse_config("w4a8+compile"), (64, 64), steps=3, tag="t", cfg_scale=3.5)
    assert p["8"]["inputs"]["cfg"] == 3.5
    ends = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]  # calls: cond, uncond per step

    def snap(t, graphs=0):
        return {"t": t, "graphs": graphs, "graph_breaks": 0, "pack_compiles": 0}

    class FakeComfy:
        def run(self, prompt):
            assert prompt["8"]["inputs"]["cfg"] == 2.0
            bench_e2e.RECORD["forwards"] = [{"before": snap(e - 0.1), "after": snap(e)} for e in ends]

    monkeypatch.setattr(bench_e2e, "_snapshot", lambda: snap(0.0))
    s = bench_e2e.cfg_prompt_stats(FakeComfy(), bench_e2e.parse_config("w4a8+compile"), (64, 64), 3, 32, 2.0)
    assert s["model_calls_per_step"] == 2
    assert s["s_per_step_mean"] == pytest.approx(0.4)
    assert s["first_step_s"] == pytest.approx(0.3)
    assert s["graphs_compiled"] == 0


def test_cosine_and_psnr():
    ref = torch.linspace(-1, 1, 1000)
    same = bench_e2e.cosine_psnr(ref.clone(), ref)
    assert same["cosine"] == pytest.approx(1.0) and same["psnr_db"] == float("inf") and not same["nan"]
    noisy = bench_e2e.cosine_psnr(ref + 0.01, ref)  # MSE 1e-4 on a span of 2: 10*log10(4/1e-4) = 46 dB
    assert noisy["psnr_db"] == pytest.approx(46.02, abs=0.01)


@requires_comfyui
def test_cpu_dry_run_through_real_comfyui(tmp_path):
    """bf16 (ComfyUI's loader), ComfyUI's own NVFP4 path and the pack with a LoRA, through
    ComfyUI's executor on the CPU (1 double + 1 single full-width block, 64x64, 32 tokens)."""
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, str(TOOLS / "bench_e2e.py"), "--comfyui", COMFYUI_PATH, "--workdir", str(tmp_path),
           "--out", str(out), "--comfy-args=--cpu", "--blocks", "1,1", "--size", "64", "--tokens", "32",
           "--steps", "2", "--configs", "bf16,comfy-nvfp4,reference,reference+lora"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"bf16", "comfy-nvfp4", "reference", "reference+lora"}
    for name in ("comfy-nvfp4", "reference", "reference+lora"):
        r = results[name]
        assert not r["vs_bf16_latent"]["nan"]
        assert r["vs_bf16_latent"]["cosine"] > 0.99, (name, r["vs_bf16_latent"])
        assert r["weight_vram_bytes"] < results["bf16"]["weight_vram_bytes"] / 2
    # ComfyUI's own NVFP4 path and the pack compute from the same NVFP4 weights
    cos = {n: results[n]["vs_bf16_latent"]["cosine"] for n in ("comfy-nvfp4", "reference")}
    assert abs(cos["comfy-nvfp4"] - cos["reference"]) < 0.01, cos
    assert results["reference+lora"]["strength_change"]["graphs_compiled"] == 0
