"""A module mixin: ``.to(dtype)`` must not cast quantized buffers, ``.to(device)`` must move them."""

from __future__ import annotations

import torch

# buffers that keep their dtype under Module.to(dtype): packed codes, e4m3 scales, float32
# global/activation scales, load-time backend data, fused-layer segment tables
KEEP_DTYPE_BUFFERS = ("weight", "weight_scale", "weight_scale_2", "input_scale", "aux", "segments")


class KeepQuantDtypes:
    """Mix into an ``nn.Module`` whose NVFP4 tensors are buffers named in :data:`KEEP_DTYPE_BUFFERS`.

    ``nn.Module._apply`` (behind ``.to``, ``.cuda``, ``.half`` ...) would cast every floating
    buffer; here those buffers only follow the device, and everything else is handled as usual.
    """

    def _apply(self, fn, recurse: bool = True):
        saved = {name: self._buffers.pop(name) for name in KEEP_DTYPE_BUFFERS if name in self._buffers}
        weight = self._parameters.get("weight")
        packed = weight is not None and weight.dtype in (torch.uint8, torch.float8_e4m3fn)
        if packed:  # a packed/FP8 weight held as a Parameter (ComfyUI layers) keeps its dtype too
            self._parameters.pop("weight")
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in saved.items():
                self._buffers[name] = _moved(fn, t)
            if packed:
                self._parameters["weight"] = torch.nn.Parameter(_moved(fn, weight.data), requires_grad=False)
        return self


def _moved(fn, t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` on the device ``fn`` sends tensors to, dtype unchanged."""
    if t is None:
        return None
    target = fn(torch.empty(0, dtype=t.dtype, device=t.device)).device
    return t if t.device == target else t.to(target)
