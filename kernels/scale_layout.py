"""Block-scale layouts: row-major ("linear") and cuBLAS's 128x4 swizzled layout.

Linear layout: ``scale[n, b]`` for output row ``n`` and K-block ``b`` (16 elements
each), shape ``[N, K/16]``. This is what ModelOpt and sglang files hold.

Swizzled layout (cuBLAS "block scaling factors layout", used by native FP4 GEMMs on
Blackwell and by comfy-kitchen's ``TensorCoreNVFP4Layout``): the matrix is padded with
zeros to ``[round_up(N, 128), round_up(K/16, 4)]`` and cut into 128x4 tiles, tiles in
row-major order. Inside a tile, row ``r`` and column ``c`` go to byte offset
``(r % 32) * 16 + (r // 32) * 4 + c``: 32 lines of 16 bytes, each line holding rows
``r, r+32, r+64, r+96`` of the tile, 4 scales each. The swizzled tensor is returned with
the padded 2-D shape (the bytes in memory order).
"""

from __future__ import annotations

import torch

SWIZZLE_ROWS = 128
SWIZZLE_COLS = 4


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    """Padded 2-D shape of the swizzled layout for a ``[rows, cols]`` scale matrix."""
    return _round_up(rows, SWIZZLE_ROWS), _round_up(cols, SWIZZLE_COLS)


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """Linear ``[N, K/16]`` -> swizzled ``[round_up(N,128), round_up(K/16,4)]`` (zero padded)."""
    if scales.ndim != 2:
        raise ValueError(f"scales must be 2-D, got shape {tuple(scales.shape)}")
    rows, cols = scales.shape
    prow, pcol = swizzled_shape(rows, cols)
    padded = scales
    if (prow, pcol) != (rows, cols):
        padded = torch.zeros((prow, pcol), dtype=scales.dtype, device=scales.device)
        padded[:rows, :cols] = scales
    # [row_tile, 4 groups of 32 rows, 32, col_tile, 4] -> [row_tile, col_tile, 32, 4 groups, 4]
    tiles = padded.view(prow // 128, 4, 32, pcol // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().view(prow, pcol)


def unswizzle_scales(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Swizzled (any shape holding the padded bytes in order) -> linear ``[rows, cols]``."""
    prow, pcol = swizzled_shape(rows, cols)
    if swizzled.numel() != prow * pcol:
        raise ValueError(
            f"swizzled scales hold {swizzled.numel()} values, expected {prow}x{pcol} for a {rows}x{cols} matrix"
        )
    tiles = swizzled.reshape(prow // 128, pcol // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(prow, pcol)[:rows, :cols].contiguous()
