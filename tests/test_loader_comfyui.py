"""NVFP4FluxLoader inside real ComfyUI (COMFYUI_PATH), on the CPU.

Every layout is written as a real file into a temporary diffusion_models folder, loaded by the
node inside ComfyUI's executor (API-format prompt over HTTP), sampled 2 steps with KSampler,
and the latents are compared with the same model whose NVFP4 weights were dequantized (by
ModelOpt for the ModelOpt/sglang layouts) and loaded as a plain bf16 model by ComfyUI's own
UNETLoader. Both runs compute in bf16 (``--bf16-unet``) with the reference backend.
"""

from __future__ import annotations

import pathlib

import flux_fixtures as ff
import pytest
import torch
from comfy_host import ComfyServer, make_comfy_home
from markers import COMFYUI_PATH, requires_comfyui
from safetensors.torch import load_file, save_file

pytestmark = requires_comfyui

# Identical dequantized weights, identical bf16 arithmetic: the latents should agree to bf16
# rounding of the few places where the order of operations differs (fused bias add).
LATENT_REL_BOUND = 1e-2


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    home = make_comfy_home(root, COMFYUI_PATH)
    models = home.models("diffusion_models")
    dims = ff.dims_for_host(COMFYUI_PATH)
    gen = torch.Generator().manual_seed(1234)
    sd = ff.bfl_bf16_state_dict(dims, gen)
    save_file(sd, str(models / "tiny_bf16.safetensors"))
    layers = ff.block_linears(dims)
    qsd, oracle = ff.quantize_layers(sd, layers)
    ff.write_comfy_native(models / "tiny_comfy_nvfp4.safetensors", qsd, layers)
    from kernels.formats.build import build_checkpoint  # the build tool, on the same bf16 weights

    build_checkpoint(models / "tiny_bf16.safetensors", models / "built_nvfp4.safetensors", preset="all-linear")
    save_file(oracle, str(models / "oracle_comfy_nvfp4.safetensors"))
    base = ff.modelopt_export(dims, models / "tiny_modelopt", seed=7)
    save_file(ff.modelopt_oracle(models / "tiny_modelopt"), str(models / "oracle_modelopt.safetensors"))
    ff.modelopt_export(dims, models / "tiny_modelopt_all", seed=8, exclude_embedders=False)
    save_file(ff.modelopt_oracle(models / "tiny_modelopt_all"), str(models / "oracle_modelopt_all.safetensors"))
    ff.sglang_from_export(models / "tiny_modelopt", models / "tiny_sglang", base)
    save_file(ff.modelopt_oracle(models / "tiny_sglang"), str(models / "oracle_sglang.safetensors"))
    schnell = {k: v for k, v in sd.items() if not k.startswith("guidance_in.")}
    sq, soracle = ff.quantize_layers(schnell, layers)
    save_file(sq, str(models / "tiny_schnell_nvfp4.safetensors"))
    save_file(soracle, str(models / "oracle_schnell_nvfp4.safetensors"))
    bad = dict(qsd)
    bad["single_blocks.0.linear2.weight"] = bad["single_blocks.0.linear2.weight"][:, :-8].contiguous()
    bad["single_blocks.0.linear2.weight_scale"] = bad["single_blocks.0.linear2.weight_scale"][:, :-1].contiguous()
    save_file(bad, str(models / "bad_shape.safetensors"))
    server = ComfyServer(home, "--bf16-unet")
    yield server
    server.close()


def sample_prompt(loader: dict, prefix: str) -> dict:
    return {
        "1": loader,
        "2": {"class_type": "NVFP4TestConditioning", "inputs": {"seed": 1, "tokens": 8, "context_dim": ff.CTX,
                                                               "pooled_dim": ff.VEC, "guidance": 3.5}},
        "3": {"class_type": "NVFP4TestConditioning", "inputs": {"seed": 2, "tokens": 8, "context_dim": ff.CTX,
                                                               "pooled_dim": ff.VEC, "guidance": 3.5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}},
    }  # fmt: skip


def nvfp4_loader(name: str, backend: str = "auto") -> dict:
    return {"class_type": "NVFP4FluxLoader", "inputs": {"model_name": name, "backend": backend,
                                                        "compute_dtype": "bf16"}}  # fmt: skip


def unet_loader(name: str) -> dict:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}


def run_latent(server: ComfyServer, loader: dict, prefix: str) -> torch.Tensor:
    entry = server.run_prompt(sample_prompt(loader, prefix))
    info = entry["outputs"]["6"]["latents"][0]
    path = pathlib.Path(server.home.root) / "output" / info["subfolder"] / info["filename"]
    return load_file(str(path))["latent_tensor"].float()


CASES = [
    ("tiny_bf16.safetensors", "tiny_bf16.safetensors"),
    ("tiny_comfy_nvfp4.safetensors", "oracle_comfy_nvfp4.safetensors"),
    ("tiny_modelopt/", "oracle_modelopt.safetensors"),
    ("tiny_modelopt_all/", "oracle_modelopt_all.safetensors"),
    ("tiny_sglang/", "oracle_sglang.safetensors"),
    ("tiny_schnell_nvfp4.safetensors", "oracle_schnell_nvfp4.safetensors"),
    ("built_nvfp4.safetensors", "oracle_comfy_nvfp4.safetensors"),  # tools/build_nvfp4_checkpoint.py output
]


def test_loader_lists_files_and_diffusers_folders(comfy):
    info = comfy.get("/object_info/NVFP4FluxLoader")["NVFP4FluxLoader"]
    assert info["display_name"] == "Load NVFP4 FLUX Model" and info["category"] == "loaders"
    names = info["input"]["required"]["model_name"][0]
    for name, _ in CASES:
        assert name in names


@pytest.mark.parametrize("name, oracle", CASES, ids=[c[0].strip("/") for c in CASES])
def test_two_step_latents_match_dequantized_bf16_model(comfy, name, oracle):
    prefix = name.strip("/").replace(".safetensors", "")
    ours = run_latent(comfy, nvfp4_loader(name), f"ours_{prefix}")
    ref = run_latent(comfy, unet_loader(oracle), f"ref_{prefix}")
    assert ours.shape == ref.shape == (1, 16, 8, 8)
    assert torch.isfinite(ours).all()
    rel = ((ours - ref).norm() / ref.norm()).item()
    print(f"{name}: relative latent difference {rel:.2e}")
    assert rel < LATENT_REL_BOUND, f"{name}: relative latent difference {rel:.2e}"


@pytest.mark.parametrize("name", ["tiny_comfy_nvfp4.safetensors", "built_nvfp4.safetensors"])
def test_comfyui_own_loader_reads_native_files_the_same_way(comfy, name):
    """The ComfyUI-native files (the tests' and the build tool's) are the format ComfyUI itself
    loads with its own mixed-precision NVFP4 ops: ComfyUI's UNETLoader and this pack agree."""
    theirs = run_latent(comfy, unet_loader(name), f"comfy_own_{name.split('.')[0]}")
    ref = run_latent(comfy, unet_loader("oracle_comfy_nvfp4.safetensors"), f"ref_{name.split('.')[0]}")
    rel = ((theirs - ref).norm() / ref.norm()).item()
    print(f"ComfyUI's own NVFP4 path on {name} vs dequantized bf16: {rel:.2e}")
    assert rel < LATENT_REL_BOUND


def test_warmup_node_returns_the_same_model(comfy):
    """NVFP4Warmup between the loader and KSampler: same latents as without it."""
    prompt = sample_prompt(nvfp4_loader("tiny_comfy_nvfp4.safetensors"), "warmed")
    prompt["7"] = {"class_type": "NVFP4Warmup", "inputs": {"model": ["1", 0], "width": 64, "height": 64,
                                                          "batch_size": 1, "text_tokens": 8}}  # fmt: skip
    prompt["5"]["inputs"]["model"] = ["7", 0]
    entry = comfy.run_prompt(prompt)
    info = entry["outputs"]["6"]["latents"][0]
    warmed = load_file(str(pathlib.Path(comfy.home.root) / "output" / info["subfolder"] / info["filename"]))
    plain = run_latent(comfy, nvfp4_loader("tiny_comfy_nvfp4.safetensors"), "unwarmed")
    assert torch.equal(warmed["latent_tensor"].float(), plain)
    assert "NVFP4 warmup:" in comfy.log()


def test_api_workflow_runs_with_the_small_model(comfy):
    """workflows/flux1-dev-nvfp4-compile.api.json with the small test model. On this CPU host the
    text encoders and VAE are replaced (no such files here: random conditioning, latents saved) and
    TorchCompileModel is skipped (compiling on CPU says nothing about the GPU path)."""
    import json

    api = json.loads((pathlib.Path(__file__).resolve().parents[1] / "workflows" /
                      "flux1-dev-nvfp4-compile.api.json").read_text())  # fmt: skip
    api["1"]["inputs"]["model_name"] = "tiny_comfy_nvfp4.safetensors"
    api["2"]["inputs"].update(width=64, height=64, text_tokens=8)
    del api["3"]
    api["9"]["inputs"].update(model=["2", 0], steps=2)
    del api["4"]
    api["5"] = {"class_type": "NVFP4TestConditioning", "inputs": {"seed": 1, "tokens": 8, "context_dim": ff.CTX,
                                                                 "pooled_dim": ff.VEC, "guidance": 3.5}}  # fmt: skip
    api["8"]["inputs"].update(width=64, height=64)
    for node in ("10", "11", "12"):
        del api[node]
    api["12"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "latents/workflow"}}
    entry = comfy.run_prompt(api)
    info = entry["outputs"]["12"]["latents"][0]
    latent = load_file(str(pathlib.Path(comfy.home.root) / "output" / info["subfolder"] / info["filename"]))
    assert torch.isfinite(latent["latent_tensor"]).all()


def test_build_node_writes_a_checkpoint_the_loader_reads(comfy):
    prompt = {"1": {"class_type": "NVFP4BuildCheckpoint", "inputs": {
        "source": "tiny_bf16.safetensors", "preset": "all-linear", "output_name": "node_built.safetensors",
        "overwrite": True}}}  # fmt: skip
    entry = comfy.run_prompt(prompt)
    assert any("layers quantized to NVFP4" in line for line in entry["outputs"]["1"]["text"])
    ours = run_latent(comfy, nvfp4_loader("node_built.safetensors"), "node_built")
    ref = run_latent(comfy, unet_loader("oracle_comfy_nvfp4.safetensors"), "node_built_ref")
    assert ((ours - ref).norm() / ref.norm()).item() < LATENT_REL_BOUND


def test_build_node_refuses_to_overwrite(comfy):
    prompt = {"1": {"class_type": "NVFP4BuildCheckpoint", "inputs": {
        "source": "tiny_bf16.safetensors", "preset": "all-linear", "output_name": "tiny_comfy_nvfp4.safetensors",
        "overwrite": False}}}  # fmt: skip
    with pytest.raises(RuntimeError, match="already exists"):
        comfy.run_prompt(prompt)


def test_bad_layer_shape_is_a_clear_error_naming_file_and_layer(comfy):
    with pytest.raises(RuntimeError) as err:
        comfy.run_prompt(sample_prompt(nvfp4_loader("bad_shape.safetensors"), "bad"))
    message = str(err.value)
    assert "bad_shape.safetensors" in message and "single_blocks.0.linear2" in message


def test_no_import_failure_in_log(comfy):
    assert "IMPORT FAILED" not in comfy.log()
