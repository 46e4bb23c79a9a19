"""Small FLUX.1 checkpoints in every layout the loader reads, with their bf16 oracles.

The model has ComfyUI-detectable shapes: 128-wide heads (axes 16/56/56), MLP 4x, context 64,
pooled 32, one double and one single block, guidance embedder (dev). Its width is 128 where the
host allows (:class:`Dims`).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from kernels import nvfp4_dequantize, nvfp4_quantize, swap_nibbles, swizzle_scales
from kernels.flux_shapes import flux1_bfl_shapes, random_flux_tensor

CTX, VEC, HEAD = 64, 32, 128


@dataclass(frozen=True)
class Dims:
    """Model width. ComfyUI 0.33 derives the head count from the width (any multiple of 128);
    v0.8.0 hard-codes 24 heads of 128, so there the test model is full width (3072)."""

    hidden: int = 128

    @property
    def mlp(self) -> int:
        return 4 * self.hidden


def dims_for_host(comfyui_path: str) -> Dims:
    detection = (pathlib.Path(comfyui_path) / "comfy" / "model_detection.py").read_text()
    derives_heads = 'dit_config["num_heads"] = dit_config["hidden_size"] // sum(dit_config["axes_dim"])' in detection
    return Dims(128 if derives_heads else 3072)


def tensor_shapes(d: Dims) -> list[tuple[str, tuple[int, ...]]]:
    return flux1_bfl_shapes(d.hidden, double_blocks=1, single_blocks=1, context=CTX, pooled=VEC)


def block_linears(d: Dims) -> list[str]:
    return [n[: -len(".weight")] for n, _ in tensor_shapes(d)
            if n.endswith(".weight") and n.startswith(("double_blocks.", "single_blocks."))]  # fmt: skip


def bfl_bf16_state_dict(d: Dims, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random FLUX.1-dev (1 double + 1 single block) in BFL names (bf16), std ~ 1/sqrt(K) like trained layers."""
    return {name: random_flux_tensor(name, shape, gen).to(torch.bfloat16) for name, shape in tensor_shapes(d)}


def quantize_layers(sd: dict, layers: list[str]) -> tuple[dict, dict]:
    """(NVFP4 state dict in the pack's conventions, bf16 oracle with the dequantized weights)."""
    q, oracle = dict(sd), dict(sd)
    for layer in layers:
        packed, scale, gs = nvfp4_quantize(sd[f"{layer}.weight"])
        q[f"{layer}.weight"], q[f"{layer}.weight_scale"], q[f"{layer}.weight_scale_2"] = packed, scale, gs
        oracle[f"{layer}.weight"] = nvfp4_dequantize(packed, scale, gs, dtype=torch.bfloat16)
    return q, oracle


def write_comfy_native(path: pathlib.Path, qsd: dict, layers: list[str]) -> None:
    """ComfyUI-native NVFP4: high-nibble-first codes, cuBLAS-tiled scales, ``.comfy_quant`` markers."""
    out = dict(qsd)
    marker = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    for layer in layers:
        out[f"{layer}.weight"] = swap_nibbles(qsd[f"{layer}.weight"])
        out[f"{layer}.weight_scale"] = swizzle_scales(qsd[f"{layer}.weight_scale"])
        out[f"{layer}.comfy_quant"] = marker.clone()
    save_file(out, str(path))


# ----------------------------------------------------------------------------- diffusers / ModelOpt

MODELOPT_EXCLUDES = ("*x_embedder*", "*context_embedder*", "*time_text_embed*", "*norm_out*", "*proj_out*")
SGLANG_BF16_PATTERNS = ("norm1.linear", "norm1_context.linear", ".norm.linear", ".ff.", ".ff_context.", "proj_mlp")


def tiny_diffusers_flux(d: Dims, seed: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=HEAD,
        num_attention_heads=d.hidden // HEAD, joint_attention_dim=CTX, pooled_projection_dim=VEC, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():  # trained-like scales instead of diffusers' zero inits
            p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5 if p.ndim == 2 else 10))
    return model.to(torch.bfloat16)


def modelopt_export(d: Dims, export_dir: pathlib.Path, seed: int, exclude_embedders: bool = True) -> dict:
    """Quantize a tiny diffusers FLUX with ModelOpt's NVFP4 preset and export it.

    Returns the base bf16 diffusers state dict (before quantization)."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    model = tiny_diffusers_flux(d, seed)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = _nvfp4_cfg(exclude_embedders)

    def calibrate(m):
        g = torch.Generator().manual_seed(seed)
        for _ in range(2):
            m(hidden_states=torch.randn(1, 16, 64, generator=g).bfloat16(),
              encoder_hidden_states=torch.randn(1, 8, CTX, generator=g).bfloat16(),
              pooled_projections=torch.randn(1, VEC, generator=g).bfloat16(), timestep=torch.tensor([0.5]),
              img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]))  # fmt: skip

    mtq.quantize(model, cfg, forward_loop=calibrate)
    export_hf_checkpoint(model, export_dir=str(export_dir))
    return base


def _nvfp4_cfg(exclude_embedders: bool) -> dict:
    import copy

    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    if exclude_embedders:
        quant_cfg = cfg["quant_cfg"]
        entries = [{"quantizer_name": pattern, "enable": False} for pattern in MODELOPT_EXCLUDES]
        if isinstance(quant_cfg, list):
            quant_cfg.extend(entries)
        else:
            quant_cfg.update({pattern: {"enable": False} for pattern in MODELOPT_EXCLUDES})
    return cfg


def modelopt_oracle(export_dir: pathlib.Path) -> dict:
    """The export with every NVFP4 weight dequantized by ModelOpt itself (diffusers names, bf16)."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    out = {}
    for key, value in sd.items():
        layer, _, leaf = key.rpartition(".")
        if leaf in ("weight_scale", "weight_scale_2", "input_scale"):
            continue
        if leaf == "weight" and f"{layer}.weight_scale" in sd:
            n, half = value.shape
            qt = NVFP4QTensor(torch.Size([n, half * 2]), torch.bfloat16, value)
            value = qt.dequantize(dtype=torch.bfloat16, scale=sd[f"{layer}.weight_scale"],
                                  double_scale=sd[f"{layer}.weight_scale_2"], block_sizes={-1: 16})  # fmt: skip
        out[key] = value
    return out


def sglang_from_export(export_dir: pathlib.Path, out_dir: pathlib.Path, base: dict, in_header: bool = True) -> None:
    """sglang's mixed FLUX.1 transformer: the export with the preset's layers put back to bf16."""
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    out = {}
    bf16_layers = set()
    for key, value in sd.items():
        layer, _, leaf = key.rpartition(".")
        if any(p in f".{layer}." for p in SGLANG_BF16_PATTERNS) and f"{layer}.weight_scale" in sd:
            bf16_layers.add(layer)
            if leaf in ("weight", "bias"):
                out[key] = base[key]
            continue
        out[key] = value
    config = json.loads((export_dir / "config.json").read_text())
    qc = config["quantization_config"]
    qc["ignore"] = sorted(set(qc.get("ignore", [])) | bf16_layers)
    qc["quant_type"] = "NVFP4"
    qc["swap_weight_nibbles"] = False
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    metadata = {"quantization_config": json.dumps(qc)} if in_header else None
    save_file(out, str(out_dir / "diffusion_pytorch_model.safetensors"), metadata=metadata)
