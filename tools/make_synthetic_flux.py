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

from kernels.flux_shapes import flux1_bfl_shapes  # noqa: E402
from kernels.formats.writer import StreamingSafetensorsWriter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("--schnell", action="store_true", help="no guidance embedder")
    args = ap.parse_args()
    shapes = flux1_bfl_shapes(guidance=not args.schnell)
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
