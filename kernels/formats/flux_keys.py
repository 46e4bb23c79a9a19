"""FLUX.1 key names: diffusers (ModelOpt/sglang exports) -> BFL (ComfyUI's FLUX model).

Each BFL linear is a list of diffusers parts concatenated along the output rows (q/k/v into
``qkv``; q/k/v/proj_mlp into ``linear1``). ``norm_out.linear`` becomes
``final_layer.adaLN_modulation.1`` with its two row halves swapped (diffusers orders the
AdaLN output (scale, shift), BFL (shift, scale)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LinearMap:
    bfl: str
    parts: tuple[str, ...]
    swap_halves: bool = False


_TOP = [
    ("img_in", ("x_embedder",)),
    ("txt_in", ("context_embedder",)),
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    ("final_layer.linear", ("proj_out",)),
]
_DOUBLE = [
    ("img_mod.lin", ("norm1.linear",)),
    ("txt_mod.lin", ("norm1_context.linear",)),
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("img_mlp.0", ("ff.net.0.proj",)),
    ("img_mlp.2", ("ff.net.2",)),
    ("txt_mlp.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", ("ff_context.net.2",)),
]
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_SINGLE = [
    ("modulation.lin", ("norm.linear",)),
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
]
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}


def count_blocks(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1)


def diffusers_linear_maps(keys: list[str]) -> list[LinearMap]:
    """Every BFL linear of the FLUX.1 model these diffusers keys describe."""
    maps = [LinearMap(bfl, parts) for bfl, parts in _TOP]
    maps.append(LinearMap("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap_halves=True))
    for i in range(count_blocks(keys, "transformer_blocks.")):
        for bfl, parts in _DOUBLE:
            maps.append(LinearMap(f"double_blocks.{i}.{bfl}", tuple(f"transformer_blocks.{i}.{p}" for p in parts)))
    for i in range(count_blocks(keys, "single_transformer_blocks.")):
        for bfl, parts in _SINGLE:
            maps.append(
                LinearMap(f"single_blocks.{i}.{bfl}", tuple(f"single_transformer_blocks.{i}.{p}" for p in parts))
            )
    return maps


def diffusers_other_keys(keys: list[str]) -> dict[str, str]:
    """Non-linear tensors (QK norms): diffusers key -> BFL key."""
    out = {}
    for i in range(count_blocks(keys, "transformer_blocks.")):
        for d, b in _DOUBLE_NORMS.items():
            out[f"transformer_blocks.{i}.{d}"] = f"double_blocks.{i}.{b}"
    for i in range(count_blocks(keys, "single_transformer_blocks.")):
        for d, b in _SINGLE_NORMS.items():
            out[f"single_transformer_blocks.{i}.{d}"] = f"single_blocks.{i}.{b}"
    return out
