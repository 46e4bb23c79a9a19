"""FP4 E2M1 codes: encode, decode, and nibble packing.

An E2M1 code is 4 bits: bit 3 is the sign, bits 0-2 index the magnitudes
``0, 0.5, 1, 1.5, 2, 3, 4, 6``. Code 8 is -0.

Packing puts two codes in one byte along the last dimension. The pack's
canonical order is ModelOpt's: the even-index element sits in the **low**
nibble, the odd-index element in the high nibble (``nibble_order="lo"``).
comfy-kitchen (and so ComfyUI-native files) defaults to the opposite
(``nibble_order="hi"``: even element in the high nibble).
"""

from __future__ import annotations

import torch

from .tracing import is_tracing

E2M1_MAX = 6.0
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES)
# Midpoints between neighbouring magnitudes; a value exactly on one of the odd
# entries (0.75, 1.75, 3.5) rounds up, the others round down: ties to even code.
_ROUND_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_TIE_UP_BOUNDS = (0.75, 1.75, 3.5)

NIBBLE_ORDERS = ("lo", "hi")

_value_tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def e2m1_value_table(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 16 E2M1 values indexed by code, cached per device and dtype (made afresh while traced
    into a compiled graph, which may not use tensors from outside it)."""
    if is_tracing():
        return torch.tensor(E2M1_VALUES, dtype=dtype, device=device)
    key = (torch.device(device), dtype)
    table = _value_tables.get(key)
    if table is None:
        table = torch.tensor(E2M1_VALUES, dtype=dtype, device=device)
        _value_tables[key] = table
    return table


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round float values to the nearest E2M1 code (uint8 in 0..15), ties to even.

    Magnitudes above 6 saturate to 6. The sign bit is set for values < 0 only
    (``-0.0`` encodes as code 0). This is ModelOpt's ``NVFP4QTensor._cast_fp4``.
    """
    if not x.is_floating_point():
        raise TypeError(f"e2m1_encode needs a floating tensor, got {x.dtype}")
    x = x.float()
    sign = (x < 0).to(torch.uint8)
    mag = x.abs()
    bounds = torch.tensor(_ROUND_BOUNDS, dtype=torch.float32, device=x.device)
    code = torch.searchsorted(bounds, mag, out_int32=True).to(torch.uint8)
    for tie in _TIE_UP_BOUNDS:
        code += (mag == tie).to(torch.uint8)
    return (sign << 3) | code


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map E2M1 codes (uint8 in 0..15) to their float values (exact in any float dtype)."""
    return e2m1_value_table(codes.device, dtype)[codes.long()]


def _check_order(nibble_order: str) -> None:
    if nibble_order not in NIBBLE_ORDERS:
        raise ValueError(f"nibble_order must be one of {NIBBLE_ORDERS}, got {nibble_order!r}")


def pack_nibbles(codes: torch.Tensor, nibble_order: str = "lo") -> torch.Tensor:
    """Pack codes ``[..., K]`` (uint8 0..15, K even) into bytes ``[..., K/2]``.

    ``nibble_order="lo"``: element ``2j`` in the low nibble of byte ``j`` (ModelOpt).
    ``nibble_order="hi"``: element ``2j`` in the high nibble (comfy-kitchen default).
    """
    _check_order(nibble_order)
    if codes.shape[-1] % 2:
        raise ValueError(f"last dimension must be even to pack nibbles, got {tuple(codes.shape)}")
    even, odd = codes[..., 0::2], codes[..., 1::2]
    if nibble_order == "lo":
        return (odd << 4) | even
    return (even << 4) | odd


def unpack_nibbles(packed: torch.Tensor, nibble_order: str = "lo") -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: bytes ``[..., K/2]`` -> codes ``[..., K]``."""
    _check_order(nibble_order)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed FP4 data must be uint8, got {packed.dtype}")
    lo, hi = packed & 0x0F, packed >> 4
    first, second = (lo, hi) if nibble_order == "lo" else (hi, lo)
    return torch.stack((first, second), dim=-1).flatten(-2)


def swap_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Swap the two nibbles of every byte (``0xAB -> 0xBA``): converts between orders.

    This is sglang's ``swap_weight_nibbles``. Applying it twice is the identity.
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed FP4 data must be uint8, got {packed.dtype}")
    return (packed << 4) | (packed >> 4)
