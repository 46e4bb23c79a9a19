"""Pick the FP4 backend for a device: declared once, logged once.

| device | backend | why |
|---|---|---|
| CPU, MPS, anything not CUDA | ``reference`` | no Triton GPU kernels there |
| CUDA, Triton missing | ``reference`` | the GPU kernels are Triton |
| sm_100/103/120/121 (Blackwell) | ``w4a4`` | native NVFP4 GEMM, if its first-use check passes |
| sm_89 (Ada), sm_90 (Hopper), Blackwell otherwise | ``w4a8`` | FP8 tensor cores |
| sm_80/86/87 (Ampere) | ``w4a16`` | no FP8: FP4 weights, bf16 tensor cores (fused decode or decode + cuBLAS) |
| older CUDA GPUs | ``reference`` | no bf16 tensor cores |

A backend asked for by name is checked against the same table and refused with a
clear error where it cannot run (e.g. ``w4a8`` on an Ampere card).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .triton_support import HAS_TRITON, TRITON_MISSING_REASON

log = logging.getLogger("nvfp4_flux")

BACKEND_NAMES = ("w4a8", "fp8_resident", "w4a4", "w4a16", "reference")
AUTO = "auto"

# minimum compute capability per Triton backend
_MIN_CAPABILITY = {"w4a8": (8, 9), "fp8_resident": (8, 9), "w4a4": (10, 0), "w4a16": (8, 0)}


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def _describe(device: torch.device) -> tuple[str, tuple[int, int] | None]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return device.type, None
    cap = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]})", cap


def backend_runs_on(name: str, device: torch.device) -> tuple[bool, str]:
    """Whether backend ``name`` can run on ``device``, and if not, why."""
    if name == "reference":
        return True, ""
    if name not in _MIN_CAPABILITY:
        return False, f"unknown backend {name!r}; choose one of {(AUTO, *BACKEND_NAMES)}"
    where, cap = _describe(device)
    if cap is None:
        return False, f"{name} needs a CUDA GPU, the model is on {where}"
    if not HAS_TRITON:
        return False, TRITON_MISSING_REASON
    need = _MIN_CAPABILITY[name]
    if cap < need:
        return False, f"{name} needs compute capability {need[0]}.{need[1]}+, {where} has {cap[0]}.{cap[1]}"
    if name == "w4a4":
        from .backends.w4a4 import native_w4a4_check

        return native_w4a4_check(device)
    return True, ""


def choose_backend(device: torch.device | str, requested: str = AUTO) -> BackendChoice:
    """The backend for ``device`` (``requested="auto"``) or the validated requested one."""
    device = torch.device(device)
    where, cap = _describe(device)
    if requested != AUTO:
        ok, why = backend_runs_on(requested, device)
        if not ok:
            raise ValueError(f"FP4 backend {requested!r} cannot run here: {why}")
        return BackendChoice(requested, f"requested by the user on {where}")
    if cap is None:
        return BackendChoice("reference", f"{where} is not a CUDA GPU: dequantize + torch linear")
    if not HAS_TRITON:
        return BackendChoice("reference", TRITON_MISSING_REASON)
    if cap >= (10, 0):
        from .backends.w4a4 import native_w4a4_check

        ok, why = native_w4a4_check(device)
        if ok:
            return BackendChoice("w4a4", f"{where}: native NVFP4 GEMM (checked against its emulation)")
        return BackendChoice("w4a8", f"{where}: {why}; FP4 weights decoded to FP8 instead")
    if cap >= (8, 9):
        return BackendChoice("w4a8", f"{where} has FP8 tensor cores: FP4 weights decoded to FP8")
    if cap >= (8, 0):
        return BackendChoice("w4a16", f"{where} has no FP8: FP4 weights decoded to bf16 for bf16 tensor cores")
    return BackendChoice("reference", f"{where} is older than Ampere: dequantize + torch linear")


_logged: set[tuple[str, str]] = set()


def log_choice_once(device: torch.device | str, choice: BackendChoice) -> None:
    """Log which backend runs and why, once per (device, backend)."""
    key = (str(device), choice.name)
    if key not in _logged:
        _logged.add(key)
        log.info("NVFP4: %s backend on %s: %s", choice.name, device, choice.reason)
