"""Backends behind the ``fp4_linear`` op: one module each, one function contract.

A backend is a function
``impl(x, weight, weight_scale, alpha, bias, aux, lora_down, lora_up, input_scale) -> y``
where

* ``x``: activations ``[..., K]`` (bf16/fp16/fp32), any leading shape;
* ``weight``: uint8 ``[N, K/2]``, E2M1 codes, even-k element in the low nibble;
* ``weight_scale``: float8_e4m3fn ``[N, K/16]``, linear layout;
* ``alpha``: float32, 0-d or ``[N]`` (the weight's global scale);
* ``bias``: ``[N]`` or ``None``;
* ``aux``: data a backend prepared once at load (:func:`kernels.FP4Linear.prepare`), or
  ``None``; a backend that uses it computes it per call when it is ``None``;
* ``lora_down``, ``lora_up``: a low-rank side branch ``y += (x @ lora_down^T) @ lora_up^T`` (LoRA,
  every adapter of the layer stacked, strength folded in), or both ``None``. ``lora_down`` is
  ``[R, K]`` in ``x.dtype``; ``lora_up`` is ``[N, R]`` in the form the backend's
  :data:`LORA_PREPARERS` entry made it (default: ``x.dtype``; the FP8 backends: e4m3 codes in
  units of the layer's FP8 column scale, see :mod:`.w4a8`);
* ``input_scale``: float32 0-d, the checkpoint's static activation global scale (ModelOpt's
  ``input_scale``: calibrated ``amax(|x|) / (6 * 448)``), or ``None``. Only backends that quantize
  activations to NVFP4 (``w4a4``) use it; the FP8 backends scale activations per token;
* ``y``: ``[..., N]`` in ``x.dtype``.

Backends register themselves in :data:`BACKENDS` by name. The registry is one
per process (kept in ``sys.modules``) even when this package is imported under two
names (``kernels`` and ``<pack>.kernels``), because the op is registered only once.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

BackendImpl = Callable[..., torch.Tensor]
# (weight, weight_scale, alpha, aux, down [R, K] float32, up [N, R] float32, dtype) -> (lora_down, lora_up)
LoraPreparer = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]

_REGISTRY_MODULE = "_nvfp4_flux_backend_registry"
_registry = sys.modules.setdefault(_REGISTRY_MODULE, types.ModuleType(_REGISTRY_MODULE))
if not hasattr(_registry, "BACKENDS"):
    _registry.BACKENDS = {}
BACKENDS: dict[str, BackendImpl] = _registry.BACKENDS


if not hasattr(_registry, "PREPARERS"):
    _registry.PREPARERS = {}
PREPARERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = _registry.PREPARERS
if not hasattr(_registry, "LORA_PREPARERS"):
    _registry.LORA_PREPARERS = {}
LORA_PREPARERS: dict[str, LoraPreparer] = _registry.LORA_PREPARERS


def register_backend(
    name: str,
    impl: BackendImpl,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prepare_lora: LoraPreparer | None = None,
) -> None:
    """Make ``impl`` callable through the op as ``backend=name``; ``prepare(weight_scale)``, if
    given, computes the backend's ``aux`` tensor once at load; ``prepare_lora``, if given, turns a
    LoRA branch into the backend's form once per patch (default: :func:`plain_lora`)."""
    BACKENDS[name] = impl
    if prepare is not None:
        PREPARERS[name] = prepare
    if prepare_lora is not None:
        LORA_PREPARERS[name] = prepare_lora


def plain_lora(weight, weight_scale, alpha, aux, down: torch.Tensor, up: torch.Tensor, dtype: torch.dtype):
    """The default LoRA form: both factors in the compute dtype."""
    return down.to(dtype), up.to(dtype)


def add_low_rank(y: torch.Tensor, x: torch.Tensor, down: torch.Tensor | None, up: torch.Tensor | None) -> torch.Tensor:
    """``y + (x @ down^T) @ up^T`` in ``x.dtype`` (``up`` already in ``x.dtype``), or ``y``."""
    if down is None:
        return y
    return y + F.linear(F.linear(x, down), up)


def get_backend(name: str) -> BackendImpl:
    """The implementation registered as ``name``; a clear error for unknown names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown FP4 backend {name!r}; known: {sorted(BACKENDS)}") from None
