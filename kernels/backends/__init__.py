"""Backends behind the ``fp4_linear`` op: one module each, one function contract.

A backend is a function ``impl(x, weight, weight_scale, alpha, bias, aux) -> y`` where

* ``x``: activations ``[..., K]`` (bf16/fp16/fp32), any leading shape;
* ``weight``: uint8 ``[N, K/2]``, E2M1 codes, even-k element in the low nibble;
* ``weight_scale``: float8_e4m3fn ``[N, K/16]``, linear layout;
* ``alpha``: float32, 0-d or ``[N]`` (the weight's global scale);
* ``bias``: ``[N]`` or ``None``;
* ``aux``: data a backend prepared once at load (:func:`kernels.FP4Linear.prepare`), or
  ``None``; a backend that uses it computes it per call when it is ``None``;
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

BackendImpl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_REGISTRY_MODULE = "_nvfp4_flux_backend_registry"
_registry = sys.modules.setdefault(_REGISTRY_MODULE, types.ModuleType(_REGISTRY_MODULE))
if not hasattr(_registry, "BACKENDS"):
    _registry.BACKENDS = {}
BACKENDS: dict[str, BackendImpl] = _registry.BACKENDS


if not hasattr(_registry, "PREPARERS"):
    _registry.PREPARERS = {}
PREPARERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = _registry.PREPARERS


def register_backend(
    name: str, impl: BackendImpl, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> None:
    """Make ``impl`` callable through the op as ``backend=name``; ``prepare(weight_scale)``, if
    given, computes the backend's ``aux`` tensor once at load."""
    BACKENDS[name] = impl
    if prepare is not None:
        PREPARERS[name] = prepare


def get_backend(name: str) -> BackendImpl:
    """The implementation registered as ``name``; a clear error for unknown names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown FP4 backend {name!r}; known: {sorted(BACKENDS)}") from None
