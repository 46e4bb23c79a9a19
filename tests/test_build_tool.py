"""tools/build_nvfp4_checkpoint.py: bf16 FLUX.1 -> mixed BF16+NVFP4, checked against ModelOpt."""

from __future__ import annotations

import json

import flux_fixtures as ff
import pytest
import torch
from safetensors.torch import load_file, save_file

from kernels.formats import CheckpointError, load_flux_state_dict
from kernels.formats.build import PRESETS_BFL, build_checkpoint
from kernels.nvfp4 import nvfp4_quantize

NVFP4QTensor = pytest.importorskip("modelopt.torch.quantization.qtensor").NVFP4QTensor
DIMS = ff.Dims(128)


def same_bits(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


@pytest.fixture
def bf16_file(tmp_path, gen):
    sd = ff.bfl_bf16_state_dict(DIMS, gen)
    path = tmp_path / "flux1-dev.safetensors"
    save_file(sd, str(path))
    return path, sd


@pytest.mark.parametrize("preset", sorted(PRESETS_BFL))
def test_weight_only_output_loads_and_matches_modelopt_bit_for_bit(tmp_path, bf16_file, preset):
    path, sd = bf16_file
    out = tmp_path / "out.safetensors"
    summary = build_checkpoint(path, out, preset=preset)
    state = load_flux_state_dict(out)
    assert state.layout.producer == "comfyui"
    assert summary.layers_quantized == len(state.fp4_layers) > 0
    for layer in state.fp4_layers:
        ref, ref_scale, ref_gs = NVFP4QTensor.quantize(sd[f"{layer}.weight"].clone(), 16)
        assert torch.equal(state.tensors[f"{layer}.weight"], ref._quantized_data), layer
        assert same_bits(state.tensors[f"{layer}.weight_scale"], ref_scale), layer
        assert torch.equal(state.tensors[f"{layer}.weight_scale_2"], ref_gs), layer
        assert torch.equal(state.tensors[f"{layer}.bias"], sd[f"{layer}.bias"])
    for layer in state.dense_layers:
        assert torch.equal(state.tensors[f"{layer}.weight"], sd[f"{layer}.weight"]), layer
    if preset == "sglang-flux1":
        assert "double_blocks.0.img_mlp.0" in state.dense_layers and "single_blocks.0.linear1" in state.dense_layers
        assert "double_blocks.0.img_attn.qkv" in state.fp4_layers
    assert max(summary.errors.values()) < 0.15
    assert "layers quantized to NVFP4" in "\n".join(summary.lines())


def test_diffusers_output_equals_modelopt_export_weights(tmp_path):
    """Weight-only from the same bf16 weights gives ModelOpt's export bytes (q/k/v share one scale)."""
    export = tmp_path / "modelopt"
    base = ff.modelopt_export(DIMS, export, seed=11)
    src = tmp_path / "bf16"
    model = ff.tiny_diffusers_flux(DIMS, 11)
    model.load_state_dict(base)
    model.save_pretrained(str(src))
    out = tmp_path / "ours"
    build_checkpoint(src, out, preset="all-linear", out_format="diffusers")
    ours = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    theirs = load_file(str(export / "diffusion_pytorch_model.safetensors"))
    compared = 0
    for key in theirs:
        if key.endswith(".weight_scale") and key in ours:
            layer = key[: -len(".weight_scale")]
            for leaf in ("weight", "weight_scale", "weight_scale_2"):
                assert same_bits(ours[f"{layer}.{leaf}"], theirs[f"{layer}.{leaf}"]), f"{layer}.{leaf}"
            compared += 1
    assert compared >= 10
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_algo"] == "NVFP4" and config["swap_weight_nibbles"] is False
    assert load_flux_state_dict(out).layout.producer == "sglang"


def test_interrupted_build_leaves_no_file(tmp_path, bf16_file):
    path, _ = bf16_file
    out = tmp_path / "out.safetensors"

    def explode(done, total, key):
        if done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_checkpoint(path, out, preset="all-linear", progress=explode)
    assert not out.exists() and not list(tmp_path.glob("out.safetensors*"))


def test_interrupted_diffusers_build_leaves_no_folder(tmp_path):
    src = tmp_path / "bf16"
    ff.tiny_diffusers_flux(DIMS, 2).save_pretrained(str(src))
    out = tmp_path / "out"

    def explode(done, total, key):
        if done == 10:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_checkpoint(src, out, out_format="diffusers", progress=explode)
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_refuses_existing_output_and_overwriting_input(tmp_path, bf16_file):
    path, _ = bf16_file
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match="already exists"):
        build_checkpoint(path, out)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="overwrite the input"):
        build_checkpoint(path, path, overwrite=True)
    build_checkpoint(path, out, overwrite=True)
    assert load_flux_state_dict(out).fp4_layers


def test_refuses_already_quantized_input(tmp_path, bf16_file):
    path, _ = bf16_file
    out = tmp_path / "q.safetensors"
    build_checkpoint(path, out)
    with pytest.raises(CheckpointError, match="already quantized"):
        build_checkpoint(out, tmp_path / "again.safetensors")


def test_custom_patterns(tmp_path, bf16_file):
    path, _ = bf16_file
    out = tmp_path / "out.safetensors"
    build_checkpoint(path, out, quantize=("double_blocks.*",), keep=("*_mod.lin",))
    state = load_flux_state_dict(out)
    assert all(layer.startswith("double_blocks.") and not layer.endswith("_mod.lin") for layer in state.fp4_layers)
    assert len(state.fp4_layers) == 8


def test_row_chunked_quantize_is_identical(gen):
    w = torch.randn(300, 64, generator=gen).to(torch.bfloat16)
    whole = nvfp4_quantize(w, row_chunk=10_000)
    chunked = nvfp4_quantize(w, row_chunk=7)
    assert all(same_bits(a, b) for a, b in zip(whole, chunked, strict=True))


def test_modelopt_method_runs_end_to_end_and_loads(tmp_path):
    from kernels.formats.build_modelopt import build_with_modelopt

    src = tmp_path / "bf16"
    ff.tiny_diffusers_flux(DIMS, 5).save_pretrained(str(src))
    out = tmp_path / "modelopt_out"
    summary = build_with_modelopt(src, out, preset="sglang-flux1", calibration="random")
    state = load_flux_state_dict(out)
    assert state.layout.producer == "sglang" and summary.layers_quantized > 0
    assert "double_blocks.0.img_attn.qkv" in state.fp4_layers
    assert "single_blocks.0.linear1" in state.mixed_layers  # q/k/v NVFP4, proj_mlp bf16
    assert "double_blocks.0.img_mlp.0" in state.dense_layers


def test_modelopt_method_says_when_text_encoders_are_missing(tmp_path):
    from kernels.formats.build_modelopt import build_with_modelopt

    src = tmp_path / "bf16"
    ff.tiny_diffusers_flux(DIMS, 5).save_pretrained(str(src))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    with pytest.raises(ValueError, match="needs FLUX.1's text encoders"):
        build_with_modelopt(src, tmp_path / "o", calibration=str(prompts))
    assert not (tmp_path / "o").exists()
