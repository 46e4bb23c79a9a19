"""Custom operations for ComfyUI's FLUX model: Linear layers that load NVFP4 tensors.

Handed to ComfyUI as ``model_options["custom_operations"]`` (as ComfyUI-GGUF does), so ComfyUI
builds its own FLUX model, model sampling and ModelPatcher, and every linear whose state dict
holds NVFP4 tensors (:mod:`kernels.formats` conventions) computes through the pack's op.
Everything else is ComfyUI's ``manual_cast`` behaviour.
"""

from __future__ import annotations

import functools
import logging

import comfy.ops
import torch
import torch.nn.functional as F

from ..kernels.fp4_linear import prepare_for_backend, prepare_lora
from ..kernels.fp4_linear_op import fp4_linear
from ..kernels.keep_dtypes import KeepQuantDtypes
from ..kernels.nvfp4 import nvfp4_dequantize
from .lora import build_side_branch, patched_dense_weight

log = logging.getLogger("nvfp4_flux")

_FP4_KEYS = ("weight", "weight_scale", "weight_scale_2", "input_scale", "dense_weight", "segments", "bias")


def in_segment_order(fp4_part: torch.Tensor, dense_part: torch.Tensor, segments, dim: int) -> torch.Tensor:
    """Interleave the NVFP4 rows and the dense rows of a mixed layer back into output order
    (``segments``: ``(is_fp4, rows)`` pairs); ``dim`` is the output-row axis (0 for weights,
    -1 for activations)."""
    pieces, used = [], {True: 0, False: 0}
    for is_fp4, rows in segments:
        source = fp4_part if is_fp4 else dense_part
        pieces.append(source.narrow(dim, used[is_fp4], rows))
        used[is_fp4] += rows
    return torch.cat(pieces, dim=dim)


def split_segments(t: torch.Tensor, segments) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`in_segment_order` on rows (dim 0): ``(NVFP4 rows, dense rows)``."""
    fp4, dense, row = [], [], 0
    for is_fp4, rows in segments:
        (fp4 if is_fp4 else dense).append(t[row : row + rows])
        row += rows
    return torch.cat(fp4), torch.cat(dense)


class LayerShapeError(ValueError):
    """A layer's tensors do not fit the model ComfyUI built (raised with the layer name)."""


class NVFP4Linear(KeepQuantDtypes, comfy.ops.manual_cast.Linear):
    """``manual_cast.Linear`` that becomes an NVFP4 layer when its state dict has ``weight_scale``."""

    fp4_backend = "reference"  # set per load by :func:`make_nvfp4_ops`

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        torch.nn.Module.__init__(self)  # nothing allocated: the state dict brings the tensors
        self.in_features, self.out_features = in_features, out_features
        self.weight = None
        self.bias = None
        self.is_fp4 = False
        self.segment_rows: tuple[tuple[bool, int], ...] = ()
        # set by LoRA patches (nodes/lora.py): the branch in the backend's form, a mixed layer's patched
        # dense rows, or the whole layer patched in bf16 (patches that are not low-rank)
        self.lora = self.dense_rows_patched = self.dense_override = None
        self._lowvram_patches_id = None
        self._compute_dtype = dtype
        self.weight_comfy_model_dtype = dtype
        self.bias_comfy_model_dtype = dtype

    def reset_parameters(self):
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # fmt: skip
        if prefix + "weight_scale" not in state_dict:
            w = state_dict.get(prefix + "weight")
            if w is None:
                missing_keys.append(prefix + "weight")
                return
            if tuple(w.shape) != (self.out_features, self.in_features):
                raise LayerShapeError(f"{prefix[:-1]}: weight {list(w.shape)}, the model expects "
                                      f"[{self.out_features}, {self.in_features}]")  # fmt: skip
            self.weight = torch.nn.Parameter(w, requires_grad=False)
            b = state_dict.get(prefix + "bias")
            if b is not None:
                self.bias = torch.nn.Parameter(b, requires_grad=False)
            return
        self._load_fp4(state_dict, prefix)

    def _load_fp4(self, sd, prefix):
        name = prefix[:-1]
        t = {k: sd.get(prefix + k) for k in _FP4_KEYS}
        fp4_rows = t["weight"].shape[0]
        dense_rows = 0 if t["dense_weight"] is None else t["dense_weight"].shape[0]
        if t["weight"].shape[1] * 2 != self.in_features or fp4_rows + dense_rows != self.out_features:
            raise LayerShapeError(f"{name}: NVFP4 weight {list(t['weight'].shape)} (+{dense_rows} dense rows) does "
                                  f"not fit [{self.out_features}, {self.in_features}]")  # fmt: skip
        if t["dense_weight"] is not None and t["dense_weight"].shape[1] != self.in_features:
            raise LayerShapeError(f"{name}: dense rows {list(t['dense_weight'].shape)} do not fit K={self.in_features}")
        self.weight = None
        del self.weight
        w, s, a, aux = prepare_for_backend(self.fp4_backend, t["weight"], t["weight_scale"], t["weight_scale_2"])
        # the packed weight is a Parameter, so ComfyUI's ModelPatcher counts it and routes patches
        # for "<layer>.weight" here; the scales are buffers. Its "model dtype" is its own (uint8 or
        # fp8), so ComfyUI's dynamic VRAM stages it as it is instead of casting codes to bf16.
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.weight_comfy_model_dtype = w.dtype
        for key, value in (("weight_scale", s), ("weight_scale_2", a), ("aux", aux),
                           ("input_scale", t["input_scale"]), ("dense_weight", t["dense_weight"]),
                           ("segments", t["segments"])):  # fmt: skip
            self.register_buffer(key, value)
        self.bias = None if t["bias"] is None else torch.nn.Parameter(t["bias"], requires_grad=False)
        if t["segments"] is not None:
            self.segment_rows = tuple((bool(f), int(r)) for f, r in t["segments"].tolist())
        self.is_fp4 = True

    # ----- LoRA (see nodes/lora.py)
    def set_patches(self, patches: list, key: str, device=None) -> None:
        device = device if device is not None else self.weight.device
        self.clear_patches()
        branch = build_side_branch(patches, self.out_features, device)
        if branch is None:
            log.info("NVFP4: %s has a patch that is not low-rank: layer dequantized to bf16 while patched", key)
            self.dense_override = patched_dense_weight(self.dequantized_weight(device), patches, key).to(
                self.compute_dtype()
            )
            return
        down, up = branch
        if self.segment_rows:
            up, dense_up = split_segments(up, self.segment_rows)
            dense = self.dense_weight.to(device, torch.float32)
            self.dense_rows_patched = (dense + dense_up @ down).to(self.dense_weight.dtype)
        self.lora = prepare_lora(self.fp4_backend, self.weight, self.weight_scale, self.weight_scale_2, self.aux,
                                 down, up, self.compute_dtype())  # fmt: skip

    def clear_patches(self) -> None:
        self.lora = self.dense_rows_patched = self.dense_override = None
        self._lowvram_patches_id = None

    def compute_dtype(self) -> torch.dtype:
        return self._compute_dtype or torch.bfloat16

    def dequantized_weight(self, device=None) -> torch.Tensor:
        """The dense ``[N, K]`` weight (float32) this layer computes with, on ``device``."""
        device = device if device is not None else self.weight.device
        w = self.weight.to(device)
        if w.dtype == torch.uint8:
            dense = nvfp4_dequantize(w, self.weight_scale.to(device), self.weight_scale_2.to(device),
                                     dtype=torch.float32)  # fmt: skip
        else:  # fp8_resident
            dense = w.to(torch.float32) * self.weight_scale_2.to(device).unsqueeze(1)
        if not self.segment_rows:
            return dense
        return in_segment_order(dense, self.dense_weight.to(device, torch.float32), self.segment_rows, dim=0)

    def _lowvram_lora(self) -> None:
        """Partial loads hand patches over as LowVramPatch weight functions: use them as a side branch."""
        for fn in self.weight_function:
            patches = getattr(fn, "patches", None)
            key = getattr(fn, "key", None)
            if patches is not None and key in patches and id(patches[key]) != self._lowvram_patches_id:
                self.set_patches(patches[key], key)
                self._lowvram_patches_id = id(patches[key])

    def forward(self, x, *args, **kwargs):
        if not self.is_fp4:
            return super().forward(x, *args, **kwargs)
        if self.weight_function:
            self._lowvram_lora()
        if self.dense_override is not None:
            bias = None if self.bias is None else self.bias.to(x.device, x.dtype)
            return F.linear(x, self.dense_override.to(x.device, x.dtype), bias)
        return self._fp4_forward(x)

    def _fp4_forward(self, x):
        dev = x.device
        staged = None
        if hasattr(self, "_v") and self.weight.device != dev:
            # ComfyUI's dynamic VRAM (comfy-aimdo): it keeps the packed weight (and bias) resident in
            # its VRAM pool when there is room and streams it otherwise; codes stay uint8/fp8
            w, bias, staged = comfy.ops.cast_bias_weight(self, x, dtype=self.weight.dtype, bias_dtype=x.dtype,
                                                         offloadable=True)  # fmt: skip
        else:
            w = self.weight.to(dev, non_blocking=True)
            bias = None if self.bias is None else self.bias.to(dev, x.dtype, non_blocking=True)
        s, a, aux, xs = (None if v is None else v.to(dev, non_blocking=True)
                         for v in (self.weight_scale, self.weight_scale_2, self.aux, self.input_scale))  # fmt: skip
        lora = None
        if self.lora is not None:  # (down in the compute dtype, up in the backend's form)
            down, up = self.lora
            up_dtype = up.dtype if up.dtype == torch.float8_e4m3fn else x.dtype
            lora = (down.to(dev, x.dtype, non_blocking=True), up.to(dev, up_dtype, non_blocking=True))
        if not self.segment_rows:
            y = fp4_linear(x, w, s, a, bias, self.fp4_backend, aux, lora, xs)
        else:
            y4 = fp4_linear(x, w, s, a, None, self.fp4_backend, aux, lora, xs)
            dense = self.dense_weight if self.dense_rows_patched is None else self.dense_rows_patched
            yd = F.linear(x, dense.to(dev, x.dtype, non_blocking=True))
            y = in_segment_order(y4, yd, self.segment_rows, dim=-1)
            y = y if bias is None else y + bias
        if staged is not None:
            comfy.ops.uncast_bias_weight(self, w, bias, staged)
        return y


@functools.cache
def make_nvfp4_ops(backend: str) -> type:
    """A ``custom_operations`` class whose Linear computes NVFP4 layers with ``backend`` (one class
    per backend: a compiled model's guards check the layer types, so a reloaded model must reuse them)."""

    class NVFP4Ops(comfy.ops.manual_cast):
        class Linear(NVFP4Linear):
            fp4_backend = backend

    return NVFP4Ops
