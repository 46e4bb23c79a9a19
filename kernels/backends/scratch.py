"""One reused scratch buffer per device for per-call weight decodes.

The W4A8 backend decodes a layer to e4m3 ``[N, K (+R)]`` and the W4A16 backend (large M) to
bf16/fp16 ``[N, K]`` in it, once per call; every layer reuses the same bytes (calls are
ordered on the device's stream), so only one layer's decoded copy exists at a time. The
buffer grows to the largest request and is kept. While a backend is traced into a compiled
graph (:mod:`.tracing`) the buffer is a fresh tensor instead, which the graph owns.
"""

from __future__ import annotations

import math

import torch

from ..tracing import is_tracing

_buffers: dict[torch.device, torch.Tensor] = {}


def scratch(device: torch.device, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous ``dtype`` tensor of ``shape`` on the first bytes of ``device``'s scratch."""
    if is_tracing():
        return torch.empty(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = _buffers.get(device)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        _buffers[device] = buf
    return buf[:nbytes].view(dtype).view(shape)
