"""Whether Triton is importable, and why not. The pack works without it (reference backend)."""

from __future__ import annotations

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except ImportError as exc:  # Windows without triton-windows, CPU-only builds
    HAS_TRITON = False
    TRITON_MISSING_REASON = f"Triton is not importable ({exc}); on Windows install triton-windows"
else:
    HAS_TRITON = True
    TRITON_MISSING_REASON = ""
