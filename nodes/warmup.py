"""NVFP4 Warmup (before Compile): compile and tune the FP4 kernels for the coming resolution."""

from __future__ import annotations

import logging
import os
import time

import comfy.model_management
import comfy.utils
import folder_paths
import torch

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


COMPILE_NODES = ("TorchCompileModel",)  # nodes that replace the model with a compiled, non-dynamic copy


def weights_staged_on_first_use(model) -> bool:
    """Whether ComfyUI copies this model's weights to the GPU in the first forward that uses
    them (its dynamic VRAM, ``ModelPatcherDynamic``, the default from ComfyUI 0.33 on)."""
    return bool(getattr(model, "is_dynamic", lambda: False)())


def compiled_downstream(prompt: dict | None, node_id: str | None) -> bool:
    """Whether a compile node (:data:`COMPILE_NODES`) consumes this node's output, directly or
    through other nodes, in the API-format ``prompt``. It runs a copy of the model loaded without
    dynamic VRAM, so staging this one's weights would be wasted."""
    if not prompt or node_id is None:
        return False
    consumers: dict[str, list[str]] = {}
    for nid, node in prompt.items():
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                consumers.setdefault(value[0], []).append(nid)
    seen, todo = set(), [str(node_id)]
    while todo:
        for nid in consumers.get(todo.pop(), ()):
            if nid not in seen:
                seen.add(nid)
                todo.append(nid)
    return any(prompt[nid].get("class_type") in COMPILE_NODES for nid in seen)


def stage_weights(model) -> None:
    """One forward of the model on a 16x16 latent and 8 text tokens, so that dynamic VRAM copies
    every weight to the GPU here instead of in the first sampling step. The copies stay resident
    until VRAM is needed elsewhere (the sampler's load keeps them: same patches)."""
    comfy.model_management.load_models_gpu([model])
    base = model.model
    unet = base.model_config.unet_config
    device = model.load_device
    cond = {"c_crossattn": torch.zeros(1, 8, unet["context_in_dim"], device=device)}
    if unet.get("vec_in_dim"):
        cond["y"] = torch.zeros(1, unet["vec_in_dim"], device=device)
    if unet.get("guidance_embed"):
        cond["guidance"] = torch.full((1,), 3.5, device=device)
    x = torch.zeros(1, base.latent_format.latent_channels, 16, 16, device=device)
    with torch.inference_mode():
        base.apply_model(x, torch.ones(1, device=device), **cond)


class NVFP4Warmup:
    """Runs every distinct FP4 GEMM shape of the model at this resolution once, so Triton compiles
    and tunes here, not inside the first sampling step or torch.compile. Tuned configs are saved in
    ComfyUI's user folder and reused on later runs. Under dynamic VRAM, and with no compile node
    downstream, one tiny forward also copies the weights to the GPU (:func:`stage_weights`), so
    the first step is as fast as the others. Returns a clone of the model (weights shared)
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
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }  # fmt: skip

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "warmup"
    CATEGORY = "advanced/model"
    DESCRIPTION = (
        "Place before TorchCompileModel: compiles and tunes the NVFP4 kernels for this resolution and, "
        "without a compile node, loads the weights to the GPU so the first step is not slower than the rest. "
        "Once compiled, the model runs cond and uncond in separate calls, so changing CFG does not recompile."
    )

    def warmup(self, model, width: int, height: int, batch_size: int, text_tokens: int, prompt=None, unique_id=None):
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
        flux_like = "context_in_dim" in model.model.model_config.unet_config
        if flux_like and weights_staged_on_first_use(model) and not compiled_downstream(prompt, unique_id):
            start = time.perf_counter()
            stage_weights(model)
            log.info("NVFP4 warmup: weights copied to the GPU in %.1f s (dynamic VRAM)", time.perf_counter() - start)
        return (cond_batch.install(model),)
