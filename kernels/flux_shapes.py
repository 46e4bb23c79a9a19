"""The GEMM shapes of one FLUX.1-dev (or schnell) transformer forward.

FLUX.1: hidden 3072, MLP 12288, 19 double blocks (image and text streams), 38 single blocks.
Image tokens are ``(H/16) * (W/16)`` (VAE /8, then 2x2 patches); text tokens 512 for dev
(T5 max length), 256 for schnell. Single blocks see image + text tokens. Modulation
linears see one row per batch element.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HIDDEN = 3072
MLP = 12288
DOUBLE_BLOCKS = 19
SINGLE_BLOCKS = 38


@dataclass(frozen=True)
class GemmShape:
    name: str  # ComfyUI/BFL layer name pattern
    m: int
    k: int
    n: int
    count: int  # how many layers of this shape one forward runs

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def image_tokens(width: int, height: int) -> int:
    return (height // 16) * (width // 16)


def flux_block_gemms(width: int = 1024, height: int = 1024, batch: int = 1, text_tokens: int = 512) -> list[GemmShape]:
    """Every block linear of one forward at this resolution and batch (embedders and final layer excluded)."""
    img = image_tokens(width, height) * batch
    txt = text_tokens * batch
    h = HIDDEN
    d, s = DOUBLE_BLOCKS, SINGLE_BLOCKS
    return [
        GemmShape("double_blocks.*.img_mod.lin", batch, h, 6 * h, d),
        GemmShape("double_blocks.*.txt_mod.lin", batch, h, 6 * h, d),
        GemmShape("double_blocks.*.img_attn.qkv", img, h, 3 * h, d),
        GemmShape("double_blocks.*.txt_attn.qkv", txt, h, 3 * h, d),
        GemmShape("double_blocks.*.img_attn.proj", img, h, h, d),
        GemmShape("double_blocks.*.txt_attn.proj", txt, h, h, d),
        GemmShape("double_blocks.*.img_mlp.0", img, h, MLP, d),
        GemmShape("double_blocks.*.img_mlp.2", img, MLP, h, d),
        GemmShape("double_blocks.*.txt_mlp.0", txt, h, MLP, d),
        GemmShape("double_blocks.*.txt_mlp.2", txt, MLP, h, d),
        GemmShape("single_blocks.*.modulation.lin", batch, h, 3 * h, s),
        GemmShape("single_blocks.*.linear1", img + txt, h, 3 * h + MLP, s),
        GemmShape("single_blocks.*.linear2", img + txt, h + MLP, h, s),
    ]


def flux1_bfl_shapes(
    hidden: int = HIDDEN,
    double_blocks: int = DOUBLE_BLOCKS,
    single_blocks: int = SINGLE_BLOCKS,
    context: int = 4096,
    pooled: int = 768,
    guidance: bool = True,
) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a FLUX.1 transformer in BFL names, in file order: ``weight`` and ``bias`` of
    each linear (MLP 4x hidden, 64 latent channels after patching) and the QK-norm ``scale``s of
    128-wide heads. Defaults are FLUX.1-dev; ``guidance=False`` is schnell."""
    h, m = hidden, 4 * hidden
    linears = [("img_in", (h, 64)), ("txt_in", (h, context)), ("time_in.in_layer", (h, 256)),
               ("time_in.out_layer", (h, h)), ("vector_in.in_layer", (h, pooled)),
               ("vector_in.out_layer", (h, h))]  # fmt: skip
    if guidance:
        linears += [("guidance_in.in_layer", (h, 256)), ("guidance_in.out_layer", (h, h))]
    norms = []
    for i in range(double_blocks):
        p = f"double_blocks.{i}"
        for s in ("img", "txt"):
            linears += [(f"{p}.{s}_mod.lin", (6 * h, h)), (f"{p}.{s}_attn.qkv", (3 * h, h)),
                        (f"{p}.{s}_attn.proj", (h, h)), (f"{p}.{s}_mlp.0", (m, h)),
                        (f"{p}.{s}_mlp.2", (h, m))]  # fmt: skip
            norms += [f"{p}.{s}_attn.norm.query_norm.scale", f"{p}.{s}_attn.norm.key_norm.scale"]
    for i in range(single_blocks):
        p = f"single_blocks.{i}"
        linears += [(f"{p}.modulation.lin", (3 * h, h)), (f"{p}.linear1", (3 * h + m, h)), (f"{p}.linear2", (h, h + m))]
        norms += [f"{p}.norm.query_norm.scale", f"{p}.norm.key_norm.scale"]
    linears += [("final_layer.adaLN_modulation.1", (2 * h, h)), ("final_layer.linear", (64, h))]
    out: list[tuple[str, tuple[int, ...]]] = []
    for name, shape in linears:
        out += [(f"{name}.weight", shape), (f"{name}.bias", (shape[0],))]
    return out + [(n, (128,)) for n in norms]


def random_flux_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """A random float32 tensor for the FLUX.1 tensor ``name``, scaled like trained layers: linear
    weights N(0, 1/fan_in) (activations stay O(1) through the residual stack), biases
    N(0, 0.02^2), norm scales 1 + N(0, 0.1^2). One ``randn`` draw from ``gen`` per tensor."""
    t = torch.randn(shape, generator=gen, device=device)
    if name.endswith(".scale"):
        return 1 + 0.1 * t
    if name.endswith(".bias"):
        return 0.02 * t
    return t / shape[1] ** 0.5
