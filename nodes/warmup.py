"""NVFP4 Warmup (before Compile): compile and tune the FP4 kernels for the coming resolution."""

from __future__ import annotations

import logging
import os
import time

import comfy.model_management
import comfy.utils
import folder_paths

from ..kernels import autotune
from ..kernels.warmup import warmup_fp4_layers
from . import cond_batch
from .lora import low_rank_factors

log = logging.getLogger("nvfp4_flux")


def user_cache_file() -> str:
    """``<ComfyUI user dir>/nvfp4_flux/<GPU>__torch-<v>__triton-<v>.json``."""
    return os.path.join(folder_paths.get_user_directory(), "nvfp4_flux", f"{autotune.device_signature()}.json")


def lora_ranks(model, layers) -> dict[str, int]:
    """Total low-rank LoRA rank per NVFP4 layer name from the patcher's patches (what the layer's
    side branch will hold once ComfyUI applies them)."""
    ranks = {}
    for name, _ in layers:
        factors = [low_rank_factors(p[1]) for p in model.patches.get(f"diffusion_model.{name}.weight", ())]
        rank = sum(f[1].shape[0] for f in factors if f is not None)
        if rank:
            ranks[name] = rank
    return ranks


class NVFP4Warmup:
    """Runs every distinct FP4 GEMM shape of the model at this resolution once, so Triton compiles
    and tunes here, not inside the first sampling step or torch.compile. Tuned configs are saved in
    ComfyUI's user folder and reused on later runs. Returns a clone of the model (weights shared)
    whose sampling, once compiled, runs cond and uncond in separate calls (:mod:`.cond_batch`), so
    a CFG change does not change the compiled model's batch size."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "width": ("INT", {"default": 1024, "min": 16, "max": 8192, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 8192, "step": 16}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "Latent batch size; twice this is warmed too (CFG)"}),
                "text_tokens": ("INT", {"default": 512, "min": 1, "max": 4096,
                                        "tooltip": "T5 tokens: 512 for FLUX.1-dev, 256 for schnell"}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "warmup"
    CATEGORY = "advanced/model"
    DESCRIPTION = (
        "Place before TorchCompileModel: compiles and tunes the NVFP4 kernels for this resolution. "
        "Once compiled, the model runs cond and uncond in separate calls, so changing CFG does not recompile."
    )

    def warmup(self, model, width: int, height: int, batch_size: int, text_tokens: int):
        diffusion_model = model.model.diffusion_model
        layers = [(n, m) for n, m in diffusion_model.named_modules() if getattr(m, "is_fp4", False)]
        if not layers:
            log.info("NVFP4 warmup: the model has no NVFP4 layers; nothing to do")
            return (cond_batch.install(model),)
        device = comfy.model_management.get_torch_device()
        cache = user_cache_file()
        loaded = autotune.load_shipped_configs() + autotune.load_cache_file(cache)
        pbar = comfy.utils.ProgressBar(1)
        start = time.perf_counter()
        stats = warmup_fp4_layers(
            layers, device, model.model.get_dtype(), width, height, (batch_size, 2 * batch_size), text_tokens,
            progress=lambda done, total: pbar.update_absolute(done, total), lora_ranks=lora_ranks(model, layers),
        )  # fmt: skip
        if stats["tuned"]:
            autotune.save_cache_file(cache)
        log.info(
            "NVFP4 warmup: %d shapes in %.1f s (%d configs tuned, %d from cache; %d cached entries loaded)",
            stats["shapes"], time.perf_counter() - start, stats["tuned"], stats["cache_hits"], loaded,
        )  # fmt: skip
        return (cond_batch.install(model),)
