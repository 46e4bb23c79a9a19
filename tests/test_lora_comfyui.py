"""ComfyUI's LoraLoaderModelOnly on models from the NVFP4 loader (real ComfyUI, CPU).

LoRA files in ComfyUI's loras folder in three key styles (BFL ``diffusion_model.*.lora_A/B``,
diffusers ``transformer.*`` with q/k/v and proj_mlp targeting slices of fused layers, kohya
``lora_unet_*``) plus a full-diff patch. The NVFP4 model with a LoRA must equal (to bf16
rounding) the bf16 model made of the same dequantized weights, patched by ComfyUI itself.
"""

from __future__ import annotations

import flux_fixtures as ff
import pytest
import torch
from comfy_host import ComfyServer, make_comfy_home
from markers import COMFYUI_PATH, requires_comfyui
from safetensors.torch import save_file
from test_loader_comfyui import nvfp4_loader, run_latent, sample_prompt, unet_loader  # noqa: F401

pytestmark = requires_comfyui
BOUND = 1e-2  # the bf16 model rounds patched weights to bf16; the side branch computes in bf16
DELTA_BOUND = 0.1  # what the LoRA changes, ours vs ComfyUI's (relative): measured 0.006-0.032 on 0.33.0


def _lora_files(folder, dims, gen):
    h, m, r = dims.hidden, dims.mlp, 4

    def pair(n, k, prefix, a="lora_A", b="lora_B"):
        return {f"{prefix}.{a}.weight": (torch.randn(r, k, generator=gen) * 0.05).to(torch.bfloat16),
                f"{prefix}.{b}.weight": (torch.randn(n, r, generator=gen) * 0.05).to(torch.bfloat16)}  # fmt: skip

    bfl = {**pair(3 * h, h, "diffusion_model.double_blocks.0.img_attn.qkv"),
           **pair(3 * h + m, h, "diffusion_model.single_blocks.0.linear1"),
           **pair(m, h, "diffusion_model.double_blocks.0.img_mlp.0")}  # fmt: skip
    diffusers = {**pair(h, h, "transformer.transformer_blocks.0.attn.to_k"),
                 **pair(h, h, "transformer.transformer_blocks.0.attn.add_v_proj"),
                 **pair(m, h, "transformer.single_transformer_blocks.0.proj_mlp")}  # fmt: skip
    kohya = {k: v * 4 for k, v in pair(h, h, "lora_unet_double_blocks_0_txt_attn_proj", "lora_down", "lora_up").items()}
    kohya["lora_unet_double_blocks_0_txt_attn_proj.alpha"] = torch.tensor(2.0)
    diff = {"diffusion_model.single_blocks.0.linear2.diff": (torch.randn(h, h + m, generator=gen) * 0.01).to(
        torch.bfloat16)}  # fmt: skip
    for name, sd in (("bfl", bfl), ("diffusers", diffusers), ("kohya", kohya), ("diff", diff)):
        save_file(sd, str(folder / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    home = make_comfy_home(root, COMFYUI_PATH)
    dims = ff.dims_for_host(COMFYUI_PATH)
    gen = torch.Generator().manual_seed(99)
    models = home.models("diffusion_models")
    layers = ff.block_linears(dims)
    qsd, oracle = ff.quantize_layers(ff.bfl_bf16_state_dict(dims, gen), layers)
    ff.write_comfy_native(models / "native.safetensors", qsd, layers)
    save_file(oracle, str(models / "oracle.safetensors"))
    base = ff.modelopt_export(dims, models / "mo", seed=3)
    ff.sglang_from_export(models / "mo", models / "sglang", base)
    save_file(ff.modelopt_oracle(models / "sglang"), str(models / "oracle_sglang.safetensors"))
    _lora_files(home.models("loras"), dims, gen)
    server = ComfyServer(home, "--bf16-unet")
    yield server
    server.close()


def with_loras(loader: dict, loras: list[tuple[str, float]], prefix: str) -> dict:
    prompt = sample_prompt(loader, prefix)
    source = ["1", 0]
    for i, (name, strength) in enumerate(loras):
        node = str(20 + i)
        prompt[node] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": source, "lora_name": name, "strength_model": strength}}  # fmt: skip
        source = [node, 0]
    prompt["5"]["inputs"]["model"] = source
    return prompt


def latent(comfy, prompt) -> torch.Tensor:
    import pathlib

    from safetensors.torch import load_file

    entry = comfy.run_prompt(prompt)
    info = entry["outputs"]["6"]["latents"][0]
    return load_file(str(pathlib.Path(comfy.home.root) / "output" / info["subfolder"] / info["filename"]))[
        "latent_tensor"
    ].float()


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


CASES = [
    ("native.safetensors", "oracle.safetensors", [("bfl.safetensors", 0.8)]),
    ("native.safetensors", "oracle.safetensors", [("diffusers.safetensors", 1.0)]),
    ("native.safetensors", "oracle.safetensors", [("kohya.safetensors", 1.3)]),
    ("native.safetensors", "oracle.safetensors", [("diff.safetensors", 1.0)]),
    ("native.safetensors", "oracle.safetensors", [("bfl.safetensors", 0.7), ("diffusers.safetensors", 0.5)]),
    ("sglang/", "oracle_sglang.safetensors", [("diffusers.safetensors", 1.0)]),
]


@pytest.mark.parametrize("model, oracle, loras", CASES, ids=lambda c: str(c))
def test_lora_matches_comfyui_patched_bf16_model(comfy, model, oracle, loras):
    tag = "_".join(n.split(".")[0] for n, _ in loras) + model.strip("/").split(".")[0]
    ours = latent(comfy, with_loras(nvfp4_loader(model), loras, f"lora_ours_{tag}"))
    ref = latent(comfy, with_loras(unet_loader(oracle), loras, f"lora_ref_{tag}"))
    plain = latent(comfy, sample_prompt(nvfp4_loader(model), f"lora_plain_{tag}"))
    ref_plain = latent(comfy, sample_prompt(unet_loader(oracle), f"lora_refplain_{tag}"))
    err, delta_err = rel(ours, ref), rel(ours - plain, ref - ref_plain)
    print(f"{model} + {loras}: latent difference {err:.2e}; LoRA effect {rel(ref, ref_plain):.2e}, "
          f"its error {delta_err:.2e}")  # fmt: skip
    assert err < BOUND
    assert rel(ref, ref_plain) > 1e-3, "the test LoRA must visibly change the result"
    assert delta_err < DELTA_BOUND


def test_strength_zero_equals_no_lora_and_removal_restores(comfy):
    plain = latent(comfy, sample_prompt(nvfp4_loader("native.safetensors"), "s0_plain"))
    zero = latent(comfy, with_loras(nvfp4_loader("native.safetensors"), [("bfl.safetensors", 0.0)], "s0_zero"))
    assert torch.equal(zero, plain)
    latent(comfy, with_loras(nvfp4_loader("native.safetensors"), [("bfl.safetensors", 1.0)], "s0_on"))
    again = latent(comfy, sample_prompt(nvfp4_loader("native.safetensors"), "s0_again"))
    assert torch.equal(again, plain), "unpatching must restore the exact base model"
