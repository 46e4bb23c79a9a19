"""Run every distinct FP4 GEMM shape of a FLUX model once, tuning kernel configs outside of
sampling and ``torch.compile`` tracing. No ComfyUI imports (the node in ``nodes/warmup.py`` wraps it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import torch

from . import autotune
from .flux_shapes import image_tokens
from .fp4_linear import prepare_lora
from .fp4_linear_op import fp4_linear

# which token count a FLUX block linear sees, by its (BFL) module name
_ROWS = [
    (re.compile(r"(^|\.)(double_blocks\.\d+\.(img|txt)_mod\.lin|single_blocks\.\d+\.modulation\.lin)$"), "batch"),
    (re.compile(r"(^|\.)double_blocks\.\d+\.img_"), "image"),
    (re.compile(r"(^|\.)double_blocks\.\d+\.txt_"), "text"),
    (re.compile(r"(^|\.)single_blocks\.\d+\."), "joint"),
    (re.compile(r"(^|\.)final_layer\.adaLN_modulation"), "batch"),
    (re.compile(r"(^|\.)final_layer\.linear"), "image"),
]


def rows_for(name: str, width: int, height: int, batch: int, text_tokens: int) -> int | None:
    """Rows (M) of the GEMM the FLUX layer ``name`` runs at this resolution and batch."""
    counts = {"batch": batch, "image": image_tokens(width, height) * batch, "text": text_tokens * batch}
    counts["joint"] = counts["image"] + counts["text"]
    for pattern, kind in _ROWS:
        if pattern.search(name):
            return counts[kind]
    return None


def warmup_fp4_layers(
    layers: Iterable[tuple[str, torch.nn.Module]],
    device: torch.device,
    dtype: torch.dtype,
    width: int,
    height: int,
    batches: Iterable[int],
    text_tokens: int,
    progress: Callable[[int, int], None] | None = None,
    lora_ranks: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Run each distinct (M, N, K, backend, LoRA rank) once with tuning on; returns counts of what ran.
    ``lora_ranks``: the LoRA rank each layer will run with (by name; absent: no LoRA), so the
    kernels' LoRA variants compile here too."""
    work: dict[tuple, tuple[torch.nn.Module, int, int]] = {}
    for name, module in layers:
        rank = (lora_ranks or {}).get(name, 0)
        for batch in batches:
            m = rows_for(name, width, height, batch, text_tokens)
            if m is None:
                continue
            key = (m, module.weight.shape[0], module.in_features, module.fp4_backend, module.weight.dtype,
                   module.bias is not None, rank)  # fmt: skip
            work.setdefault(key, (module, m, rank))
    before = dict(autotune.stats)
    with autotune.tuning_enabled(), torch.no_grad():
        for i, (module, m, rank) in enumerate(work.values()):
            x = torch.randn(m, module.in_features, device=device, dtype=dtype)
            w, s, a, aux = [None if t is None else t.to(device) for t in
                            (module.weight, module.weight_scale, module.weight_scale_2, module.aux)]  # fmt: skip
            # with the layer's bias: kernels specialize on it (a bias-less warmup compiles the wrong variant)
            bias = None if module.bias is None else module.bias.to(device, dtype)
            lora = None
            if rank:  # a zero branch of the same rank: same kernels, same shapes
                down = torch.zeros(rank, module.in_features, device=device)
                up = torch.zeros(w.shape[0], rank, device=device)
                lora = prepare_lora(module.fp4_backend, w, s, a, aux, down, up, dtype)
            fp4_linear(x, w, s, a, bias, module.fp4_backend, aux, lora)
            if progress is not None:
                progress(i + 1, len(work))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"shapes": len(work), **{k: autotune.stats[k] - before[k] for k in before}}
