"""Bad checkpoints fail with one clear line naming the file (and the layer), before any model is built."""

from __future__ import annotations

import json

import flux_fixtures as ff
import pytest
import torch
from safetensors.torch import save_file

from kernels.formats import CheckpointError, load_flux_state_dict

DIMS = ff.Dims(128)
LAYER = "double_blocks.0.img_attn.qkv"


@pytest.fixture
def qsd(gen):
    sd = ff.bfl_bf16_state_dict(DIMS, gen)
    return ff.quantize_layers(sd, ff.block_linears(DIMS))[0]


def write(tmp_path, sd, name="model.safetensors", metadata=None):
    path = tmp_path / name
    save_file(sd, str(path), metadata=metadata)
    return path


def expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as err:
        load_flux_state_dict(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_valid_file_loads(tmp_path, qsd):
    state = load_flux_state_dict(write(tmp_path, qsd))
    assert state.layout.producer == "modelopt" and state.layout.naming == "bfl"
    assert LAYER in state.fp4_layers and state.variant == "dev"


def test_truncated_file(tmp_path, qsd):
    path = write(tmp_path, qsd)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    expect_error(path, "truncated")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    expect_error(path, "safetensors")


def test_non_flux_model(tmp_path):
    sd = {"input_blocks.0.0.weight": torch.zeros(4, 4), "out.2.weight": torch.zeros(4)}
    expect_error(write(tmp_path, sd), "not a FLUX.1 transformer")


def test_flux2_is_refused(tmp_path, qsd):
    qsd["double_stream_modulation_img.lin.weight"] = torch.zeros(16, 16)
    expect_error(write(tmp_path, qsd), "not FLUX.1")


def test_layer_lacking_global_scale(tmp_path, qsd):
    del qsd[f"{LAYER}.weight_scale_2"]
    expect_error(write(tmp_path, qsd), LAYER, "weight_scale_2")


def test_layer_with_wrong_scale_shape(tmp_path, qsd):
    qsd[f"{LAYER}.weight_scale"] = qsd[f"{LAYER}.weight_scale"][:, :-1].contiguous()
    expect_error(write(tmp_path, qsd), LAYER, "weight_scale shape")


def test_layer_with_wrong_weight_dtype(tmp_path, qsd):
    qsd[f"{LAYER}.weight"] = qsd[f"{LAYER}.weight"].view(torch.int8)
    expect_error(write(tmp_path, qsd), LAYER, "uint8")


def test_nan_block_scale(tmp_path, qsd):
    scale = qsd[f"{LAYER}.weight_scale"].clone()
    scale.view(torch.uint8)[3, 2] = 0x7F  # e4m3fn NaN
    qsd[f"{LAYER}.weight_scale"] = scale
    expect_error(write(tmp_path, qsd), LAYER, "NaN")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_bad_global_scale(tmp_path, qsd, value):
    qsd[f"{LAYER}.weight_scale_2"] = torch.tensor(value)
    expect_error(write(tmp_path, qsd), LAYER, "weight_scale_2")


def _folder_with_config(tmp_path, gen, qc: dict, metadata=None):
    folder = tmp_path / "transformer"
    ff.modelopt_export(DIMS, folder, seed=3)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"].update(qc)
    (folder / "config.json").write_text(json.dumps(config))
    if metadata is not None:
        from safetensors.torch import load_file

        f = folder / "diffusion_pytorch_model.safetensors"
        save_file(load_file(str(f)), str(f), metadata=metadata)
    return folder


def test_unknown_quant_algo(tmp_path, gen):
    folder = _folder_with_config(tmp_path, gen, {"quant_algo": "W4A8_AWQ"})
    expect_error(folder, "quant_algo 'W4A8_AWQ'")


def test_nibble_order_contradicting_config(tmp_path, gen):
    folder = _folder_with_config(
        tmp_path, gen, {"swap_weight_nibbles": False},
        metadata={"quantization_config": json.dumps({"quant_algo": "NVFP4", "swap_weight_nibbles": True})},
    )  # fmt: skip
    expect_error(folder, "nibble order contradicts")


def test_sglang_swap_flag_swaps_nibbles(tmp_path, gen):
    """swap_weight_nibbles: true means the file stores the even element in the high nibble."""
    folder = _folder_with_config(tmp_path, gen, {"swap_weight_nibbles": False, "quant_type": "NVFP4"})
    plain = load_flux_state_dict(folder).tensors
    from safetensors.torch import load_file

    f = folder / "diffusion_pytorch_model.safetensors"
    swapped = {k: (v if not k.endswith(".weight") or v.dtype != torch.uint8 else ff.swap_nibbles(v))
               for k, v in load_file(str(f)).items()}  # fmt: skip
    save_file(swapped, str(f))
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["swap_weight_nibbles"] = True
    (folder / "config.json").write_text(json.dumps(config))
    state = load_flux_state_dict(folder)
    assert state.layout.nibble_order == "hi"
    for key, value in plain.items():
        assert torch.equal(state.tensors[key].view(torch.uint8), value.view(torch.uint8)) if value.dtype in (
            torch.uint8, torch.float8_e4m3fn) else torch.equal(state.tensors[key], value), key  # fmt: skip


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.safetensors", "no such file")
