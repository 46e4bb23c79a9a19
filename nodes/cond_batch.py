"""Under ``torch.compile``, cond and uncond go through the model in separate calls.

ComfyUI batches the cond and uncond of a CFG step into one model call when memory allows
(``comfy.samplers.calc_cond_batch``): the diffusion model sees the latent batch ``B`` at cfg 1
and ``2B`` at cfg > 1, or ``B`` again when free memory is short. A model compiled by ComfyUI's
``TorchCompileModel`` (``dynamic=None``) compiles its first batch size statically and recompiles
at the first change (Dynamo specializes sizes 0 and 1 and marks a size dynamic only after it
changed): minutes of Inductor work for a full FLUX, in the middle of a prompt.

:func:`one_cond_per_call` is a ``sampler_calc_cond_batch_function`` (a ComfyUI sampler hook) that
runs each cond list in its own call once the model carries a compile wrapper (its model options
hold ComfyUI's ``TORCH_COMPILE_KWARGS`` entry), so the compiled model always sees the latent
batch, and leaves ComfyUI's batching alone otherwise: eager FLUX is bound by host time per call,
where one batched call is cheaper. The GEMM work is the same either way (each call's GEMMs have
half the rows).
"""

from __future__ import annotations

import logging

import comfy.samplers
import torch
from comfy_api.torch_helpers.torch_compile import TORCH_COMPILE_KWARGS

log = logging.getLogger("nvfp4_flux")

HOOK = "sampler_calc_cond_batch_function"


def one_cond_per_call(args: dict) -> list[torch.Tensor]:
    """The hook: ``args`` has ``conds``, ``input``, ``sigma``, ``model``, ``model_options``."""
    model, conds, x, sigma, options = args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]
    if TORCH_COMPILE_KWARGS not in options or len(conds) < 2:
        return comfy.samplers.calc_cond_batch(model, conds, x, sigma, options)
    return [
        torch.zeros_like(x) if cond is None else comfy.samplers.calc_cond_batch(model, [cond], x, sigma, options)[0]
        for cond in conds
    ]


def install(model):  # noqa: ANN001, ANN201 (ComfyUI ModelPatcher in and out)
    """A clone of ``model`` (weights shared) whose sampling uses :func:`one_cond_per_call`; the
    model itself where another node already installed a cond-batch hook (that one is kept)."""
    if model.model_options.get(HOOK) not in (None, one_cond_per_call):
        log.warning("NVFP4 warmup: the model already has a %s (another node's); CFG batch changes may recompile", HOOK)
        return model
    patched = model.clone()
    patched.model_options[HOOK] = one_cond_per_call
    return patched
