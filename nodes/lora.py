"""LoRA on NVFP4 layers: low-rank patches become a side branch, the FP4 weights are never modified.

``y = fp4_gemm(x) + (x @ A^T) @ B^T`` with ``A`` the stacked down-projections of every low-rank
patch of the layer and ``B`` their up-projections times strength and ``alpha / rank``, placed at
the rows the patch targets (fused qkv / linear1 slices), so several LoRAs cost one branch. The
backend computes it (:func:`kernels.fp4_linear.prepare_lora`; the FP8 backends inside their FP8
GEMM as extra K columns). In a mixed layer the rows kept dense get ``B A`` merged into a patched
copy of those rows, as ComfyUI patches any bf16 weight. Removing a LoRA drops the branch: the
base model is restored exactly. Patches that are not plain low-rank (full diffs, LoKr, DoRA, ...)
fall back to: dequantize, patch with ComfyUI's own ``calculate_weight``, keep that layer in bf16
(logged with the layer name).

ComfyUI applies patches through ``ModelPatcher.patch_weight_to_device`` (full loads) or
``LowVramPatch`` weight functions (partial loads); both reach :meth:`NVFP4Linear.set_patches`.
ComfyUI 0.33's dynamic VRAM patcher would instead apply a ``LowVramPatch`` to the staged
weight and write the result back into it (fatal for packed codes): its ``load`` is given the
model without the NVFP4 layers' patches, which become side branches here.
"""

from __future__ import annotations

import logging

import comfy.lora
import torch

log = logging.getLogger("nvfp4_flux")


def low_rank_factors(adapter) -> tuple[torch.Tensor, torch.Tensor, float | None] | None:
    """``(up [N, r], down [r, K], alpha)`` of a plain LoRA patch, else ``None``."""
    weights = None
    name = getattr(adapter, "name", None)
    if name == "lora" and hasattr(adapter, "weights"):
        weights = adapter.weights
    elif isinstance(adapter, tuple) and len(adapter) == 2 and adapter[0] == "lora":  # older ComfyUI
        weights = adapter[1]
    if weights is None:
        return None
    up, down, alpha, mid = weights[0], weights[1], weights[2], weights[3]
    dora = weights[4] if len(weights) > 4 else None
    reshape = weights[5] if len(weights) > 5 else None
    if mid is not None or dora is not None or reshape is not None or up.ndim != 2 or down.ndim != 2:
        return None
    return up, down, None if alpha is None else float(alpha)


def build_side_branch(patches: list, out_features: int, device) -> tuple | None:
    """``(A [R, K], B [N, R])`` in float32 for a list of ComfyUI patch tuples, or ``None`` if one is
    not low-rank."""
    downs, blocks = [], []
    for patch in patches:
        strength, adapter, strength_model, offset, function = patch[:5]
        factors = low_rank_factors(adapter)
        if factors is None or strength_model != 1.0 or function is not None:
            return None
        if offset is not None and offset[0] != 0:
            return None
        up, down, alpha = factors
        rank = down.shape[0]
        scale = strength * (alpha / rank if alpha is not None else 1.0)
        start, rows = (0, out_features) if offset is None else (offset[1], offset[2])
        if up.shape[0] != rows:
            return None
        downs.append(down.to(device, torch.float32))
        blocks.append((start, rows, up.to(device, torch.float32) * scale))
    a = torch.cat(downs)
    b = torch.zeros(out_features, a.shape[0], device=device, dtype=torch.float32)
    col = 0
    for (start, rows, up), down in zip(blocks, downs, strict=True):
        b[start : start + rows, col : col + down.shape[0]] = up
        col += down.shape[0]
    return a, b


def patched_dense_weight(dense: torch.Tensor, patches: list, key: str) -> torch.Tensor:
    """ComfyUI's own weight patching on a dequantized weight (the fallback for non-low-rank patches)."""
    return comfy.lora.calculate_weight(patches, dense.to(torch.float32), key)


class NVFP4PatcherMixin:
    """ModelPatcher behaviour for NVFP4 layers (mixed into the class of the patcher the loader returns)."""

    def patch_weight_to_device(self, key, device_to=None, *args, **kwargs):
        module = _fp4_module(self.model, key)
        if module is None or key not in self.patches:
            return super().patch_weight_to_device(key, device_to, *args, **kwargs)
        if kwargs.get("return_weight"):
            return patched_dense_weight(module.dequantized_weight(device_to), self.patches[key], key)
        module.set_patches(self.patches[key], key, device_to)
        return None

    def clone(self, *args, **kwargs):
        # ComfyUI 0.33's clone(disable_dynamic=True) (TorchCompileModel) returns a plain ModelPatcher
        return enable_nvfp4_lora(super().clone(*args, **kwargs))

    def load(self, device_to=None, *args, **kwargs):
        is_dynamic = getattr(self, "is_dynamic", None)
        if is_dynamic is None or not is_dynamic():
            return super().load(device_to, *args, **kwargs)
        fp4_patches = {k: self.patches.pop(k) for k in list(self.patches) if _fp4_module(self.model, k) is not None}
        try:
            result = super().load(device_to, *args, **kwargs)
        finally:
            self.patches.update(fp4_patches)
        for m in self.model.modules():
            if getattr(m, "is_fp4", False):
                m.clear_patches()
        for key, patches in fp4_patches.items():
            _fp4_module(self.model, key).set_patches(patches, key, device_to)
        return result

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for m in self.model.modules():
                if getattr(m, "is_fp4", False):
                    m.clear_patches()
        return super().unpatch_model(device_to, unpatch_weights)


def _fp4_module(model, key: str):
    if not key.endswith(".weight"):
        return None
    try:
        module = model.get_submodule(key[: -len(".weight")])
    except AttributeError:
        return None
    return module if getattr(module, "is_fp4", False) else None


_classes: dict[type, type] = {}


def enable_nvfp4_lora(patcher):
    """Give ``patcher`` (and its clones) the NVFP4 patching behaviour."""
    cls = type(patcher)
    if issubclass(cls, NVFP4PatcherMixin):
        return patcher
    if cls not in _classes:
        _classes[cls] = type(f"NVFP4{cls.__name__}", (NVFP4PatcherMixin, cls), {})
    patcher.__class__ = _classes[cls]
    return patcher
