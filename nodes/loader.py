"""Load any supported NVFP4 (or plain bf16) FLUX.1 checkpoint into ComfyUI's own FLUX model."""

from __future__ import annotations

import inspect
import logging
import os

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import torch

from ..kernels.dispatch import AUTO, BACKEND_NAMES, choose_backend, log_choice_once
from ..kernels.formats import CheckpointError, load_flux_state_dict
from .lora import enable_nvfp4_lora
from .ops import LayerShapeError, make_nvfp4_ops

log = logging.getLogger("nvfp4_flux")

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_MODEL_FOLDER = "diffusion_models"


def list_checkpoints() -> list[str]:
    """``.safetensors`` files of ComfyUI's diffusion_models folders, plus diffusers folders
    (any sub-folder holding a ``config.json``, e.g. ``flux-nvfp4/transformer``)."""
    names = [n for n in folder_paths.get_filename_list(_MODEL_FOLDER) if n.endswith(".safetensors")]
    for root in folder_paths.get_folder_paths(_MODEL_FOLDER):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if "config.json" in filenames and any(f.endswith(".safetensors") for f in filenames):
                names.append(os.path.relpath(dirpath, root).replace(os.sep, "/") + "/")
    return sorted(set(names))


def resolve_checkpoint(name: str) -> str:
    """Full path of a name from :func:`list_checkpoints`; a clear error if it is gone."""
    if name.endswith("/"):
        for root in folder_paths.get_folder_paths(_MODEL_FOLDER):
            path = os.path.join(root, name.rstrip("/"))
            if os.path.isdir(path):
                return path
    else:
        path = folder_paths.get_full_path(_MODEL_FOLDER, name)
        if path is not None:
            return path
    raise FileNotFoundError(f"{name}: not found in ComfyUI's {_MODEL_FOLDER} folders")


def load_nvfp4_flux(path: str, options: dict, disable_dynamic: bool = False):
    """Build a ComfyUI ``ModelPatcher`` for the checkpoint at ``path``.

    ``options``: ``backend`` (``auto`` or a name) and ``compute_dtype`` (``bf16``/``fp16``).
    Registered as the patcher's ``cached_patcher_init`` so ComfyUI can rebuild the model
    (TorchCompileModel's ``clone(disable_dynamic=True)`` does).
    """
    device = comfy.model_management.get_torch_device()
    choice = choose_backend(device, options.get("backend", AUTO))
    log_choice_once(device, choice)
    pbar = comfy.utils.ProgressBar(100)
    state = load_flux_state_dict(path, progress=lambda done, total: pbar.update_absolute(int(100 * done / total)))
    model_options = {
        "custom_operations": make_nvfp4_ops(choice.name),
        "dtype": COMPUTE_DTYPES[options.get("compute_dtype", "bf16")],
    }
    kwargs = {}
    if "disable_dynamic" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters:
        kwargs["disable_dynamic"] = disable_dynamic
    try:
        patcher = comfy.sd.load_diffusion_model_state_dict(state.tensors, model_options=model_options, **kwargs)
    except LayerShapeError as exc:
        raise CheckpointError(path, str(exc)) from exc
    if patcher is None:
        raise CheckpointError(path, "ComfyUI could not detect the model type of the converted state dict")
    patcher.cached_patcher_init = (load_nvfp4_flux, (path, dict(options)))
    enable_nvfp4_lora(patcher)
    log.info(
        "NVFP4 FLUX.1-%s from %s (%s layout): %d NVFP4 linears, %d bf16, %d mixed; backend %s",
        state.variant, path, state.layout.producer, len(state.fp4_layers), len(state.dense_layers),
        len(state.mixed_layers), choice.name,
    )  # fmt: skip
    return patcher


class NVFP4FluxLoader:
    """Load NVFP4 FLUX Model: ModelOpt / sglang / ComfyUI-native NVFP4 files and plain bf16 FLUX.1."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (list_checkpoints(), {"tooltip": "A file or diffusers folder in diffusion_models"}),
                "backend": ([AUTO, *BACKEND_NAMES], {"default": AUTO, "tooltip": (
                    "auto picks per GPU: w4a4 (Blackwell, native FP4, if its first-use check passes), "
                    "w4a8 (Hopper/Ada, Blackwell otherwise), w4a16 (Ampere), reference (CPU). "
                    "fp8_resident: faster on Hopper/Ada, 1 byte per weight in VRAM instead of ~0.56.")}),
                "compute_dtype": (list(COMPUTE_DTYPES), {"default": "bf16"}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a FLUX.1 transformer with NVFP4 (4-bit) weights into ComfyUI's own FLUX model."

    def load(self, model_name: str, backend: str = AUTO, compute_dtype: str = "bf16"):
        path = resolve_checkpoint(model_name)
        return (load_nvfp4_flux(path, {"backend": backend, "compute_dtype": compute_dtype}),)
