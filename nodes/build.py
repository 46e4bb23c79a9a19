"""Build NVFP4 FLUX Checkpoint: the build tool as a node (weight-only, writes into diffusion_models)."""

from __future__ import annotations

import os

import comfy.utils

from ..kernels.formats.build import PRESETS_BFL, build_checkpoint
from .loader import list_checkpoints, resolve_checkpoint


class NVFP4BuildCheckpoint:
    """Quantizes a bf16 FLUX.1 transformer from diffusion_models to a mixed BF16+NVFP4
    ComfyUI-native file in the same folder (ModelOpt's weight math; CPU only, streamed: ~1.5 GB RAM)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source": (list_checkpoints(), {"tooltip": "bf16 FLUX.1 transformer (file or diffusers folder)"}),
                "preset": (sorted(PRESETS_BFL), {"default": "sglang-flux1"}),
                "output_name": ("STRING", {"default": "flux1-dev-nvfp4.safetensors"}),
                "overwrite": ("BOOLEAN", {"default": False}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("model_name",)
    OUTPUT_NODE = True
    FUNCTION = "build"
    CATEGORY = "advanced/model"
    DESCRIPTION = "Writes a mixed BF16+NVFP4 FLUX.1 checkpoint into models/diffusion_models (takes minutes)."

    def build(self, source: str, preset: str, output_name: str, overwrite: bool = False):
        name = os.path.basename(output_name.strip())
        if not name.endswith(".safetensors") or name != output_name.strip():
            raise ValueError(f"{output_name}: give a plain file name ending in .safetensors")
        source_path = resolve_checkpoint(source).rstrip("/")
        out = os.path.join(os.path.dirname(source_path), name)  # next to the source, in its models folder
        pbar = comfy.utils.ProgressBar(1)
        summary = build_checkpoint(
            source_path, out, preset=preset, overwrite=overwrite,
            progress=lambda done, total, key: pbar.update_absolute(done, total),
        )  # fmt: skip
        return {"ui": {"text": summary.lines()}, "result": (name,)}
