"""The warmup's weight staging for ComfyUI's dynamic VRAM (real ComfyUI, CPU).

Under dynamic VRAM (``ModelPatcherDynamic``, ComfyUI 0.33's default on NVIDIA GPUs) a weight is
copied to the GPU by the first forward that uses it, so the first sampling step pays for loading
the whole model. The NVFP4 Warmup node runs one tiny forward to take that copy out of the first
step, unless a TorchCompileModel node downstream will replace the model with a non-dynamic copy.
A CPU has no dynamic VRAM, so the script tells the node the model is dynamic and checks that the
tiny forward runs through ComfyUI's ``apply_model`` on the pack's model, leaves the sampled
latents unchanged, and is skipped when a compile node follows (directly or through another node).
"""

from __future__ import annotations

import re

import pytest
from comfy_host import run_in_process_script
from markers import COMFYUI_PATH, requires_comfyui

SCRIPT = r"""

class Passthrough:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"model": ("MODEL",)}}}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "testing"

    def apply(self, model):
        return (model.clone(),)


comfy = start_comfyui({comfy!r}, ["--cpu"], work / "home", {{**bench_e2e.EXTRA_NODES, "TestPassthrough": Passthrough}})
import nodes
# the real TorchCompileModel node, compiling with aot_eager on the CPU (no C++ toolchain needed)
compile_node = sys.modules[nodes.NODE_CLASS_MAPPINGS["TorchCompileModel"].__module__]
set_wrapper = compile_node.set_torch_compile_wrapper
compile_node.set_torch_compile_wrapper = lambda model, backend, **kw: set_wrapper(model=model, backend="aot_eager",
                                                                                  **kw)
warmup = next(m for n, m in sys.modules.items() if n.endswith(".nodes.warmup") and hasattr(m, "stage_weights"))
staged = []
original_stage = warmup.stage_weights
warmup.stage_weights = lambda model: (staged.append(1), original_stage(model))
forwards = []
torch.nn.modules.module.register_module_forward_pre_hook(
    lambda module, args: forwards.append(tuple(args[0].shape)) if type(module).__name__ == "Flux" else None
)


def prompt(seed, after_warmup=()):
    p = {{
        "1": {{"class_type": "NVFP4FluxLoader", "inputs": {{"model_name": bench_e2e.NVFP4_FILE, "backend": "reference",
                                                         "compute_dtype": "bf16"}}}},
        "3": {{"class_type": "NVFP4Warmup", "inputs": {{"model": ["1", 0], "width": 64, "height": 64, "batch_size": 1,
                                                     "text_tokens": 32}}}},
        "6": {{"class_type": "NVFP4BenchConditioning", "inputs": {{"seed": 7, "tokens": 32, "guidance": 3.5}}}},
        "7": {{"class_type": "EmptySD3LatentImage", "inputs": {{"width": 64, "height": 64, "batch_size": 1}}}},
        "8": {{"class_type": "KSampler", "inputs": {{"model": ["3", 0], "seed": seed, "steps": 2, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "simple", "positive": ["6", 0], "negative": ["6", 0],
              "latent_image": ["7", 0], "denoise": 1.0}}}},
        "9": {{"class_type": "NVFP4BenchSink", "inputs": {{"samples": ["8", 0], "tag": str(seed)}}}},
    }}
    model = ["3", 0]
    for i, class_type in enumerate(after_warmup):
        inputs = {{"model": model, "backend": "inductor"}} if class_type == "TorchCompileModel" else {{"model": model}}
        p[str(20 + i)] = {{"class_type": class_type, "inputs": inputs}}
        model = [str(20 + i), 0]
    p["8"]["inputs"]["model"] = model
    return p


def run(label, p):
    staged.clear(); forwards.clear()
    comfy.run(p)
    latent = bench_e2e.RECORD["latent"]
    print("RUN", label, len(staged), forwards[0] if forwards else None, bool(torch.isfinite(latent).all()), flush=True)
    return latent


plain = run("not_dynamic", prompt(42))
comfy.reset()
warmup.weights_staged_on_first_use = lambda model: True
dynamic = run("dynamic", prompt(42))
print("SAME_LATENT", bool(torch.equal(plain, dynamic)), flush=True)
comfy.reset()
run("compiled_after", prompt(43, ("TorchCompileModel",)))
comfy.reset()
run("compiled_later", prompt(44, ("TestPassthrough", "TorchCompileModel")))
"""


@pytest.fixture(scope="module")
def staging_run(tmp_path_factory) -> dict[str, tuple[int, str, bool]]:
    """label -> (staging forwards, shape of the first Flux forward, finite latent)."""
    run = run_in_process_script(SCRIPT, tmp_path_factory.mktemp("staging"), COMFYUI_PATH)
    runs = {
        m[0]: (int(m[1]), m[2], m[3] == "True")
        for m in re.findall(r"^RUN (\S+) (\d+) (.+) (True|False)$", run.stdout, re.M)
    }
    runs["same_latent"] = re.search(r"^SAME_LATENT True$", run.stdout, re.M) is not None
    return runs


@requires_comfyui
def test_no_staging_without_dynamic_vram(staging_run):
    assert staging_run["not_dynamic"][0] == 0


@requires_comfyui
def test_dynamic_vram_stages_with_a_tiny_forward_that_changes_nothing(staging_run):
    count, first_forward, finite = staging_run["dynamic"]
    assert count == 1 and finite
    assert first_forward == "(1, 16, 16, 16)", "the first Flux forward must be the staging one, on a 16x16 latent"
    assert staging_run["same_latent"], "staging changed the sampled latent"


@requires_comfyui
@pytest.mark.parametrize("label", ["compiled_after", "compiled_later"])
def test_no_staging_when_a_compile_node_follows(staging_run, label):
    count, first_forward, finite = staging_run[label]
    assert count == 0 and finite
    assert first_forward != "(1, 16, 16, 16)"
