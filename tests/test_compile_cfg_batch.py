"""A compiled NVFP4 FLUX across steps, reruns and CFG batch changes (real ComfyUI, CPU).

Loader -> NVFP4 Warmup -> compile -> KSampler through ComfyUI's executor on a 1+1-block
full-width FLUX at 64x64. The compile step is ComfyUI's own ``set_torch_compile_wrapper`` (what
``TorchCompileModel`` calls) with the aot_eager backend, so no C++ toolchain is needed; graph
and recompile counts are Dynamo's, the same under Inductor. ``--use-pytorch-cross-attention``
gives the CPU the SDPA attention ComfyUI uses on GPUs (its CPU default, sub-quadratic attention,
breaks graphs on its own). Prompts (2 steps, a new seed each): cfg 1 (uncond skipped), cfg 2
(cond + uncond), cfg 1, cfg 2; the warmup's sampler hook (nodes/cond_batch.py) runs cond and
uncond in separate calls once the model is compiled, so the batch stays 1. Then one cfg 2 prompt
without the compile node, where ComfyUI's batching (cond + uncond in one call of batch 2) must be
left alone. (A change of the step count recompiles in ComfyUI v0.8 whatever the model: its compile
wrapper guards on ``transformer_options["sample_sigmas"]``; 0.33 filters that guard.)
"""

from __future__ import annotations

import re
import subprocess

import pytest
from comfy_host import run_in_process_script
from markers import COMFYUI_PATH, requires_comfyui

SCRIPT = r"""

class AotEagerCompile:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"model": ("MODEL",)}}}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "testing"

    def apply(self, model):
        from comfy_api.torch_helpers import set_torch_compile_wrapper

        try:
            m = model.clone(disable_dynamic=True)  # as TorchCompileModel does in ComfyUI 0.33
        except TypeError:  # older ComfyUI: no dynamic VRAM
            m = model.clone()
        set_torch_compile_wrapper(model=m, backend="aot_eager")
        return (m,)


nodes = {{**bench_e2e.EXTRA_NODES, "NVFP4TestAotEagerCompile": AotEagerCompile}}
comfy = start_comfyui({comfy!r}, ["--cpu", "--use-pytorch-cross-attention"], work / "home", nodes)
from torch._dynamo.utils import counters


def prompt(cfg, seed, compiled=True):
    return {{
        "1": {{"class_type": "NVFP4FluxLoader", "inputs": {{"model_name": bench_e2e.NVFP4_FILE, "backend": "reference",
                                                         "compute_dtype": "bf16"}}}},
        "3": {{"class_type": "NVFP4Warmup", "inputs": {{"model": ["1", 0], "width": 64, "height": 64, "batch_size": 1,
                                                     "text_tokens": 32}}}},
        "4": {{"class_type": "NVFP4TestAotEagerCompile", "inputs": {{"model": ["3", 0]}}}},
        "6": {{"class_type": "NVFP4BenchConditioning", "inputs": {{"seed": 7, "tokens": 32, "guidance": 3.5}}}},
        "7": {{"class_type": "EmptySD3LatentImage", "inputs": {{"width": 64, "height": 64, "batch_size": 1}}}},
        "8": {{"class_type": "KSampler", "inputs": {{"model": ["4" if compiled else "3", 0], "seed": seed, "steps": 2,
              "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "positive": ["6", 0], "negative": ["6", 0],
              "latent_image": ["7", 0], "denoise": 1.0}}}},
        "9": {{"class_type": "NVFP4BenchSink", "inputs": {{"samples": ["8", 0], "tag": f"{{cfg}}-{{seed}}"}}}},
    }}


for cfg, seed in ((1.0, 42), (2.0, 43), (1.0, 44), (2.0, 45)):  # (a new seed: not answered from cache)
    comfy.run(prompt(cfg, seed))
    print("GRAPHS", cfg, seed, counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), flush=True)

batches = []
torch.nn.modules.module.register_module_forward_pre_hook(
    lambda module, args: batches.append(args[0].shape[0]) if type(module).__name__ == "Flux" else None
)
comfy.run(prompt(2.0, 46, compiled=False))
print("EAGER_BATCHES", sorted(set(batches)), flush=True)
"""


@pytest.fixture(scope="module")
def cfg_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """The script's run (stdout holds its GRAPHS and EAGER_BATCHES lines)."""
    return run_in_process_script(SCRIPT, tmp_path_factory.mktemp("cfg_batch"), COMFYUI_PATH)


@pytest.fixture(scope="module")
def graph_counts(cfg_run) -> list[tuple[int, int]]:
    """(graphs compiled so far, graph breaks so far) after each of the four compiled prompts."""
    run = cfg_run
    counts = [(int(g), int(b)) for g, b in re.findall(r"^GRAPHS \S+ \S+ (\d+) (\d+)$", run.stdout, re.M)]
    assert len(counts) == 4, run.stdout[-2000:]
    return counts


@requires_comfyui
def test_one_graph_no_breaks_no_recompile_across_steps_and_reruns(graph_counts):
    (g1, b1), (g2, b2), (g3, b3), (g4, b4) = graph_counts
    assert (g1, b1) == (1, 0), "the first prompt (2 steps) compiles one graph with no break"
    assert b4 == 0
    assert g3 == g2 and g4 == g2, "after both batch sizes were seen, reruns compile nothing"


@requires_comfyui
def test_no_recompile_on_cfg_batch_changes(graph_counts):
    assert graph_counts[1][0] == graph_counts[0][0], "cfg 1 -> 2 compiled another graph"


@requires_comfyui
def test_uncompiled_model_keeps_comfyuis_cond_uncond_batching(cfg_run):
    found = re.findall(r"^EAGER_BATCHES \[([\d, ]+)\]$", cfg_run.stdout, re.M)
    assert found, cfg_run.stdout[-2000:]
    assert [int(b) for b in found[0].split(",")] == [2], "cfg 2 without compile: one call with cond + uncond"
