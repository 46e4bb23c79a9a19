"""Build a mixed BF16+NVFP4 FLUX.1 checkpoint from the bf16 transformer.

  # weight-only (no GPU, no text encoders; ModelOpt's weight math), ComfyUI single file:
  python tools/build_nvfp4_checkpoint.py flux1-dev.safetensors flux1-dev-nvfp4.safetensors
  # every block linear in NVFP4 instead of sglang's FLUX.1 preset:
  python tools/build_nvfp4_checkpoint.py flux1-dev.safetensors out.safetensors --preset all-linear
  # custom layer choice (globs on BFL names for ComfyUI output, diffusers names for diffusers output):
  python tools/build_nvfp4_checkpoint.py in.safetensors out.safetensors --quantize "double_blocks.*.img_attn.*"
  # diffusers folder in, ModelOpt/sglang-style folder out:
  python tools/build_nvfp4_checkpoint.py FLUX.1-dev/transformer out_dir --format diffusers
  # ModelOpt itself (mtq.quantize + calibration + export, then sglang's mixed-layer rewrite):
  python tools/build_nvfp4_checkpoint.py FLUX.1-dev/transformer out_dir --method modelopt --calibration random

The weight-only method streams one tensor at a time (peak RSS stated in the README) and writes to
``<out>.partial`` first: an error or Ctrl-C leaves no output. It refuses an existing output unless
``--overwrite`` and never writes over its input.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from kernels.formats import CheckpointError  # noqa: E402
from kernels.formats.build import PRESETS_BFL, build_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="bf16 FLUX.1 transformer: BFL .safetensors file or diffusers folder")
    ap.add_argument("output", help="output .safetensors (comfyui format) or folder (diffusers format)")
    ap.add_argument("--preset", default="sglang-flux1", choices=sorted(PRESETS_BFL))
    ap.add_argument("--quantize", default="", help="comma-separated globs of layers to quantize (overrides --preset)")
    ap.add_argument("--keep", default="", help="comma-separated globs of layers to keep in bf16")
    ap.add_argument("--format", default="comfyui", choices=["comfyui", "diffusers"])
    ap.add_argument("--method", default="weight-only", choices=["weight-only", "modelopt"])
    ap.add_argument("--calibration", default=None,
                    help="modelopt method: a text file of prompts (needs --text-encoders) or 'random'")  # fmt: skip
    ap.add_argument("--text-encoders", default=None, help="modelopt method: folder with t5xxl and clip_l (diffusers)")
    ap.add_argument("--device", default="cpu", help="weight-only method: where to quantize (cuda is much faster)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    split = lambda s: tuple(p for p in s.split(",") if p)  # noqa: E731

    def progress(done: int, total: int, key: str) -> None:
        if done == total or done % 50 == 0:
            print(f"  [{done}/{total}] {key}", file=sys.stderr, flush=True)

    try:
        if args.method == "modelopt":
            from kernels.formats.build_modelopt import build_with_modelopt

            summary = build_with_modelopt(
                args.input, args.output, preset=args.preset, calibration=args.calibration,
                text_encoders=args.text_encoders, overwrite=args.overwrite,
            )  # fmt: skip
        else:
            summary = build_checkpoint(
                args.input, args.output, preset=args.preset, quantize=split(args.quantize), keep=split(args.keep),
                out_format=args.format, overwrite=args.overwrite, progress=progress, device=args.device,
            )  # fmt: skip
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import resource

    print("\n".join(summary.lines()))
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
