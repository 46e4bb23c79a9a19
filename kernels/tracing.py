"""Tracing the backends into a compiled graph (``torch.compile``).

Under ``torch.compile`` an FP4 linear on CUDA is the op ``nvfp4_flux::fp4_linear_traced`` (a
``torch.library.triton_op``, :mod:`kernels.fp4_linear_op`): Inductor runs the backend's Python
once while tracing (shape checks, tuned-config lookups, path choice) and from then on launches
its Triton kernels and cuBLAS calls from its own generated code, with no Python of the pack per
call. Inside that trace (:func:`tracing`) the backends

* launch Triton kernels through ``torch.library.wrap_triton`` (:func:`triton_launcher`), and
* allocate their per-call decode buffer fresh instead of reusing the per-device scratch
  (:mod:`kernels.backends.scratch`): a graph may not write into a tensor it does not own. Each
  such buffer dies after its GEMM, so the caching allocator hands the same bytes to the next
  layer and still only one layer's decoded copy exists at a time;
* use no tensor cached outside the graph (lookup tables): the W4A16 GEMV decodes nibbles
  arithmetically instead of through its pair table (the same exact values), and the E2M1
  value table is made inside the trace;
* pass ``None`` for a pointer argument a launch does not use (Triton makes it a constexpr),
  never another argument's tensor: Inductor materializes a computed tensor once per argument
  it is passed as, so ``kernel(x, x, ...)`` had the producer of ``x`` (a GELU, a concat) write
  it twice (H100 session 10: 100 vs 70 us for FLUX's 4096 x 12288 GELU).

Outside a trace (eager calls) kernels launch directly: going through ``wrap_triton``'s
higher-order op costs far more host time than the launch.

The flag is one per process (kept in ``sys.modules``, like the backend registry), because the op
registered by one import of this package may run backends registered by another (``kernels``
imported by tools and ``<pack>.kernels`` inside ComfyUI, in one process).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
from collections.abc import Iterator

import torch

_shared = sys.modules.setdefault("_nvfp4_flux_tracing_state", types.ModuleType("_nvfp4_flux_tracing_state"))
if not hasattr(_shared, "state"):
    _shared.state = threading.local()
_state = _shared.state


@contextlib.contextmanager
def tracing(on: bool = True) -> Iterator[None]:
    """Mark the enclosed backend code as being traced into a compiled graph (``on=False``: as
    running eagerly, e.g. a one-off check on real tensors in the middle of a trace)."""
    previous = getattr(_state, "on", False)
    _state.on = on
    try:
        yield
    finally:
        _state.on = previous


def is_tracing() -> bool:
    return getattr(_state, "on", False)


@contextlib.contextmanager
def outside_trace() -> Iterator[None]:
    """Run the enclosed code on real tensors even in the middle of a trace (a one-off check whose
    result is cached): the trace's dispatch modes and the flag are off inside. No-op otherwise."""
    if not is_tracing():
        yield
        return
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), tracing(False):
        yield


def triton_launcher(kernel):  # noqa: ANN001, ANN201 (a Triton JITFunction and its launch proxy)
    """``kernel`` itself, or its ``wrap_triton`` proxy while tracing; index it with the grid."""
    return torch.library.wrap_triton(kernel) if is_tracing() else kernel
