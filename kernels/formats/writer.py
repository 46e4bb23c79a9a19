"""Streaming safetensors writer: the header first (from declared names, dtypes and shapes),
then each tensor's bytes as it is produced, so a 24 GB model is written holding one tensor.

Writes to ``<out>.partial`` and renames at the end; on any error the partial file is removed
and ``<out>`` is untouched.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import torch

_DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "U8", torch.int8: "I8",
    torch.int64: "I64", torch.int32: "I32", torch.float8_e4m3fn: "F8_E4M3", torch.float64: "F64", torch.bool: "BOOL",
}  # fmt: skip


class StreamingSafetensorsWriter:
    """``with StreamingSafetensorsWriter(path, specs, metadata) as w: w.write(name, tensor)`` in spec order."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:  # fmt: skip
        self.path = pathlib.Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.specs = specs
        header, offset = {}, 0
        for name, dtype, shape in specs:
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._header = len(raw).to_bytes(8, "little") + raw
        self._next = 0
        self._fh = None

    def __enter__(self) -> StreamingSafetensorsWriter:
        self._fh = open(self.partial, "wb")
        self._fh.write(self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expect_name, dtype, shape = self.specs[self._next]
        if name != expect_name or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"writer expected {expect_name} {dtype} {list(shape)}, got {name} {tensor.dtype} "
                             f"{list(tensor.shape)}")  # fmt: skip
        data = tensor.detach().contiguous().cpu()
        self._fh.write(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fh.close()
        if exc_type is None and self._next != len(self.specs):
            exc_type = RuntimeError
        if exc_type is not None:
            self.partial.unlink(missing_ok=True)
            if exc is None:
                raise RuntimeError(f"{self.path}: only {self._next} of {len(self.specs)} tensors were written")
            return
        os.replace(self.partial, self.path)
