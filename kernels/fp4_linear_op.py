"""The custom op every FP4 linear goes through: ``torch.ops.nvfp4_flux.fp4_linear``, and its
traced twin ``torch.ops.nvfp4_flux.fp4_linear_traced`` used under ``torch.compile``.

``fp4_linear`` (eager) is defined with a schema, one ``CompositeExplicitAutograd`` kernel and a
fake (meta) implementation. It is registered through ``torch.library.Library`` rather than
``torch.library.custom_op``: the latter wraps every call in Python autograd and output-aliasing
checks that cost more host time per call than the kernels' own launches (H100 host, torch 2.11:
277 vs 147 us per call; bench/NOTES.md).

``fp4_linear_traced`` is the same computation as a ``torch.library.triton_op`` (CUDA tensors,
every backend but ``reference``): Dynamo puts one node per linear in the graph with no graph
break, and Inductor then traces the backend's Python once (:mod:`kernels.tracing`)
and launches its Triton kernels and cuBLAS calls from its generated code, so a compiled step
spends no host time in the pack's Python (a compiled FLUX step makes ~300 of these calls).
Because the compile caches key such a graph by the op's name only, registering the twin also
tags them with the package's fingerprint (:mod:`kernels.compile_cache`).
:func:`fp4_linear` picks the twin while Dynamo traces. Inference only: there is no backward.

Signature::

    fp4_linear(x, weight, weight_scale, alpha, bias, aux, lora_down, lora_up, input_scale, backend) -> y

with the tensor contract stated in :mod:`kernels.backends`; ``backend`` is a name
registered there. The op is registered once per process even if this file is
imported under two module names (as ``kernels`` by tools and tests and as a
submodule of the pack inside ComfyUI).
"""

from __future__ import annotations

import functools

import torch

from . import backends
from .backends import reference as _reference  # noqa: F401  (registers "reference")
from .compile_cache import tag_compile_caches
from .tracing import tracing
from .triton_support import HAS_TRITON

if HAS_TRITON:  # registers "w4a16", "w4a8", "fp8_resident", "w4a4"
    from .backends import w4a4 as _w4a4  # noqa: F401
    from .backends import w4a8 as _w4a8  # noqa: F401
    from .backends import w4a16 as _w4a16  # noqa: F401

OP_NAMESPACE = "nvfp4_flux"
OP_NAME = "fp4_linear"
_QUALNAME = f"{OP_NAMESPACE}::{OP_NAME}"


def _fp4_linear_impl(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None,
    lora_down: torch.Tensor | None,
    lora_up: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    return backends.get_backend(backend)(x, weight, weight_scale, alpha, bias, aux, lora_down, lora_up, input_scale)


def _fp4_linear_fake(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    aux: torch.Tensor | None,
    lora_down: torch.Tensor | None,
    lora_up: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    # uint8: packed NVFP4 [N, K/2]; float8_e4m3fn: the fp8_resident backend's decoded [N, K]
    per_byte = 2 if weight.dtype == torch.uint8 else 1
    torch._check(
        x.shape[-1] == weight.shape[1] * per_byte,
        lambda: (
            f"x has K={x.shape[-1]}, weight {weight.dtype} {tuple(weight.shape)} needs K={weight.shape[1] * per_byte}"
        ),
    )
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_SCHEMA = (
    f"{OP_NAME}(Tensor x, Tensor weight, Tensor weight_scale, Tensor alpha, Tensor? bias, Tensor? aux, "
    "Tensor? lora_down, Tensor? lora_up, Tensor? input_scale, str backend) -> Tensor"
)
_libraries: list[torch.library.Library] = []  # a registration lives as long as its Library object


def _register() -> None:
    if hasattr(torch.ops, OP_NAMESPACE) and hasattr(getattr(torch.ops, OP_NAMESPACE), OP_NAME):
        return  # already registered by another import of this file
    lib = torch.library.Library(OP_NAMESPACE, "FRAGMENT")
    lib.define(_SCHEMA)
    lib.impl(OP_NAME, _fp4_linear_impl, "CompositeExplicitAutograd")
    torch.library.register_fake(_QUALNAME, _fp4_linear_fake, lib=lib)
    _libraries.append(lib)


_register()

_TRACED_NAME = "fp4_linear_traced"


@functools.wraps(_fp4_linear_impl)  # (the schema is inferred from the wrapped signature)
def _fp4_linear_traced(*args: object, **kwargs: object) -> torch.Tensor:
    with tracing():
        return _fp4_linear_impl(*args, **kwargs)


def _register_traced() -> bool:
    """Register the ``triton_op`` twin once per process; ``False`` where torch lacks ``triton_op``."""
    namespace = getattr(torch.ops, OP_NAMESPACE)
    if hasattr(namespace, _TRACED_NAME):
        return True
    if not (HAS_TRITON and hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")):
        return False
    torch.library.triton_op(f"{OP_NAMESPACE}::{_TRACED_NAME}", _fp4_linear_traced, mutates_args=())
    tag_compile_caches()  # the caches must not serve graphs compiled from another version of the kernels
    return True


_HAS_TRACED = _register_traced()
_EAGER_OP = getattr(getattr(torch.ops, OP_NAMESPACE), OP_NAME)
_TRACED_OP = getattr(getattr(torch.ops, OP_NAMESPACE), _TRACED_NAME) if _HAS_TRACED else None


def fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str = "reference",
    aux: torch.Tensor | None = None,
    lora: tuple[torch.Tensor, torch.Tensor] | None = None,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ dequant(weight)^T + bias`` (+ the LoRA branch ``lora = (down, up)`` in the backend's
    form, :func:`kernels.fp4_linear.prepare_lora`) through the registered op (see module docstring);
    ``input_scale``: the checkpoint's static activation scale, if any (used by ``w4a4``)."""
    down, up = (None, None) if lora is None else lora
    traced = _HAS_TRACED and backend != "reference" and x.is_cuda and torch.compiler.is_compiling()
    op = _TRACED_OP if traced else _EAGER_OP
    return op(x, weight, weight_scale, alpha, bias, aux, down, up, input_scale, backend)
