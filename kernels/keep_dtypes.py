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
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in saved.items():
                if t is not None:
                    target = fn(torch.empty(0, dtype=t.dtype, device=t.device)).device
                    t = t if t.device == target else t.to(target)
                self._buffers[name] = t
        return self
