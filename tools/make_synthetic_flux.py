"""Write a full-size FLUX.1-dev transformer (BFL names, bf16, random weights) for size/RSS tests.

  python tools/make_synthetic_flux.py /tmp/flux1-dev-synthetic.safetensors [--schnell]

Random weights with std 1/sqrt(in_features), norms near 1; streamed tensor by tensor
(23.8 GB file, ~0.3 GB RAM). Not an image model: for measuring tools, memory and speed only.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels.flux_shapes import DOUBLE_BLOCKS, HIDDEN, MLP, SINGLE_BLOCKS  # noqa: E402
from kernels.formats.writer import StreamingSafetensorsWriter  # noqa: E402


def flux1_shapes(guidance: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    h, m = HIDDEN, MLP
    linears = [("img_in", (h, 64)), ("txt_in", (h, 4096)), ("time_in.in_layer", (h, 256)),
               ("time_in.out_layer", (h, h)), ("vector_in.in_layer", (h, 768)),
               ("vector_in.out_layer", (h, h))]  # fmt: skip
    if guidance:
        linears += [("guidance_in.in_layer", (h, 256)), ("guidance_in.out_layer", (h, h))]
    norms = []
    for i in range(DOUBLE_BLOCKS):
        p = f"double_blocks.{i}"
        for s in ("img", "txt"):
            linears += [(f"{p}.{s}_mod.lin", (6 * h, h)), (f"{p}.{s}_attn.qkv", (3 * h, h)),
                        (f"{p}.{s}_attn.proj", (h, h)), (f"{p}.{s}_mlp.0", (m, h)),
                        (f"{p}.{s}_mlp.2", (h, m))]  # fmt: skip
            norms += [f"{p}.{s}_attn.norm.query_norm.scale", f"{p}.{s}_attn.norm.key_norm.scale"]
    for i in range(SINGLE_BLOCKS):
        p = f"single_blocks.{i}"
        linears += [(f"{p}.modulation.lin", (3 * h, h)), (f"{p}.linear1", (3 * h + m, h)), (f"{p}.linear2", (h, h + m))]
        norms += [f"{p}.norm.query_norm.scale", f"{p}.norm.key_norm.scale"]
    linears += [("final_layer.adaLN_modulation.1", (2 * h, h)), ("final_layer.linear", (64, h))]
    out = []
    for name, shape in linears:
        out += [(f"{name}.weight", shape), (f"{name}.bias", (shape[0],))]
    out += [(n, (128,)) for n in norms]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("--schnell", action="store_true", help="no guidance embedder")
    args = ap.parse_args()
    shapes = flux1_shapes(guidance=not args.schnell)
    gen = torch.Generator().manual_seed(0)
    specs = [(name, torch.bfloat16, shape) for name, shape in shapes]
    with StreamingSafetensorsWriter(args.output, specs) as writer:
        for name, shape in shapes:
            if name.endswith(".scale"):
                t = 1 + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias"):
                t = 0.02 * torch.randn(shape, generator=gen)
            else:
                t = torch.randn(shape, generator=gen) / shape[1] ** 0.5
            writer.write(name, t.to(torch.bfloat16))
    params = sum(torch.Size(s).numel() for _, s in shapes)
    print(f"wrote {args.output}: {params / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
