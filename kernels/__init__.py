"""NVFP4 numerics, layouts and FP4 GEMM backends. No ComfyUI imports here.

Inside the pack use relative imports only: PyPI has an unrelated package named
``kernels``, and this folder must resolve both as ``kernels`` (tools, tests) and
as ``<pack>.kernels`` (ComfyUI).
"""

from .e2m1 import e2m1_decode, e2m1_encode, pack_nibbles, swap_nibbles, unpack_nibbles
from .fp4_linear import FP4Linear
from .fp4_linear_op import fp4_linear
from .nvfp4 import BLOCK_SIZE, nvfp4_dequantize, nvfp4_quantize
from .scale_layout import swizzle_scales, swizzled_shape, unswizzle_scales

__all__ = [
    "BLOCK_SIZE",
    "FP4Linear",
    "e2m1_decode",
    "e2m1_encode",
    "fp4_linear",
    "nvfp4_dequantize",
    "nvfp4_quantize",
    "pack_nibbles",
    "swap_nibbles",
    "swizzle_scales",
    "swizzled_shape",
    "unpack_nibbles",
    "unswizzle_scales",
]
