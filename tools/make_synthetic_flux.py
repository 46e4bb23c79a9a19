"""Write a full-size FLUX.1-dev transformer (BFL names, bf16, random weights) for size/speed tests.

  python tools/make_synthetic_flux.py /tmp/flux1-dev-synthetic.safetensors [--schnell] [--device cuda]

Random weights as ``kernels.flux_shapes.random_flux_tensor`` draws them (linears N(0, 1/fan_in)).
Streamed tensor by tensor (23.8 GB file, ~0.3 GB RAM). Not an image model: for measuring tools,
memory and speed only.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels.flux_shapes import DOUBLE_BLOCKS, SINGLE_BLOCKS, flux1_bfl_shapes, random_flux_tensor  # noqa: E402
from kernels.formats.writer import StreamingSafetensorsWriter  # noqa: E402


def write_synthetic_flux(
    output: str | pathlib.Path,
    *,
    guidance: bool = True,
    double_blocks: int = DOUBLE_BLOCKS,
    single_blocks: int = SINGLE_BLOCKS,
    device: str = "cpu",
    seed: int = 0,
) -> int:
    """Write the file; returns its parameter count."""
    shapes = flux1_bfl_shapes(double_blocks=double_blocks, single_blocks=single_blocks, guidance=guidance)
    gen = torch.Generator(device).manual_seed(seed)
    specs = [(name, torch.bfloat16, shape) for name, shape in shapes]
    with StreamingSafetensorsWriter(output, specs) as writer:
        for name, shape in shapes:
            writer.write(name, random_flux_tensor(name, shape, gen, device).to(torch.bfloat16))
    return sum(torch.Size(s).numel() for _, s in shapes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("--schnell", action="store_true", help="no guidance embedder")
    ap.add_argument("--device", default="cpu", help="where the random numbers are drawn (cuda is faster)")
    args = ap.parse_args()
    params = write_synthetic_flux(args.output, guidance=not args.schnell, device=args.device)
    print(f"wrote {args.output}: {params / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
