"""One reused scratch buffer per device for per-call weight decodes.

The W4A8 backend decodes a layer to e4m3 ``[N, K (+R)]`` and the W4A16 backend (large M) to
bf16/fp16 ``[N, K]`` in it, once per call; every layer reuses the same bytes (calls are
ordered on the device's stream), so only one layer's decoded copy exists at a time. The
buffer grows to the largest request and is kept.
"""

from __future__ import annotations

import torch

_buffers: dict[torch.device, torch.Tensor] = {}


def scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A flat ``dtype`` view of ``numel`` elements at the start of ``device``'s scratch bytes."""
    nbytes = numel * dtype.itemsize
    buf = _buffers.get(device)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        _buffers[device] = buf
    return buf[:nbytes].view(dtype)
