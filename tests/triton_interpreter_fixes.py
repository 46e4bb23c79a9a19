"""Fixes for Triton 3.6's CPU interpreter, so CPU tests compute what the GPU computes.

Two bugs of the interpreter (not of the GPU compiler) would otherwise make the CPU run of the
kernels differ from the GPU run:

* its float downcast (``_convert_float``) rounds half-up without carrying a mantissa overflow
  into the exponent, so 124.0 -> e4m3 gives 64 instead of 128;
* its ``tl.dot`` multiplies bf16 operands as their raw uint16 bit patterns.

Conversions between float types torch knows are redone with torch (round to nearest even, as
``cvt.rn`` does on the GPU), and bf16 dot operands are widened to float32 first.
"""

from __future__ import annotations

import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter

_TORCH_DTYPES = {
    "fp8e4nv": torch.float8_e4m3fn,
    "fp8e5": torch.float8_e5m2,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
_original_convert = interpreter._convert_float


def _convert_float(data, input_dtype, output_dtype, rounding_mode):
    src, dst = _TORCH_DTYPES.get(input_dtype.name), _TORCH_DTYPES.get(output_dtype.name)
    if src is None or dst is None:
        return _original_convert(data, input_dtype, output_dtype, rounding_mode)
    raw = torch.from_numpy(np.ascontiguousarray(data).view(getattr(np, f"uint{input_dtype.primitive_bitwidth}")))
    as_int = {8: torch.uint8, 16: torch.int16, 32: torch.int32}
    value = raw.view(torch.int16 if input_dtype.primitive_bitwidth == 16 else raw.dtype)
    value = value.view(as_int[input_dtype.primitive_bitwidth]).view(src)
    out = value.to(dst).view(as_int[output_dtype.primitive_bitwidth]).numpy()
    return out.view(getattr(np, f"uint{output_dtype.primitive_bitwidth}"))


_original_dot = interpreter.InterpreterBuilder.create_dot


def _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    def widen(t):
        if t.dtype.scalar == tl.bfloat16:
            data = _convert_float(t.data, tl.bfloat16, tl.float32, None).view(np.float32)
            return interpreter.TensorHandle(data, tl.float32)
        return t

    return _original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)


def install() -> None:
    interpreter._convert_float = _convert_float
    interpreter.InterpreterBuilder.create_dot = _create_dot
