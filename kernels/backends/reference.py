"""Reference backend: dequantize the whole weight, then ``torch.nn.functional.linear``.

Runs on any device (CPU included). It is the oracle every fast backend is tested
against, and the fallback for shapes or devices no fast backend handles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nvfp4 import nvfp4_dequantize
from . import add_low_rank, register_backend


def reference_fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None = None,
    lora_down: torch.Tensor | None = None,
    lora_up: torch.Tensor | None = None,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, dequantize(weight) in x.dtype, bias)`` plus the LoRA branch in ``x.dtype``."""
    w = nvfp4_dequantize(weight, weight_scale, alpha, dtype=x.dtype)
    return add_low_rank(F.linear(x, w, None if bias is None else bias.to(x.dtype)), x, lora_down, lora_up)


register_backend("reference", reference_fp4_linear)
