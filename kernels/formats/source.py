"""Open a checkpoint (one .safetensors file, or a diffusers folder with config.json) lazily.

Tensors are read one at a time through ``safetensors.safe_open``; nothing is loaded up front.
A truncated or corrupt file fails here with a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from .errors import CheckpointError


@dataclass
class CheckpointSource:
    path: pathlib.Path
    files: list[pathlib.Path]
    config: dict | None  # config.json of a diffusers folder
    extra_config: dict | None  # hf_quant_config.json (older sglang/ModelOpt form)
    metadata: dict[str, str]  # safetensors header metadata (merged over shards)
    key_file: dict[str, pathlib.Path] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return list(self.key_file)

    def get(self, key: str) -> torch.Tensor:
        f = self.key_file[key]
        try:
            with safe_open(str(f), framework="pt", device="cpu") as handle:
                return handle.get_tensor(key)
        except Exception as exc:  # truncated data, bad offsets
            raise CheckpointError(f, f"cannot read tensor {key!r} ({exc})") from exc

    def dtype_and_shape(self, key: str) -> tuple[str, list[int]]:
        f = self.key_file[key]
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            sl = handle.get_slice(key)
            return sl.get_dtype(), list(sl.get_shape())

    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)


def _read_header(path: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > size - 8:
                raise CheckpointError(path, "not a safetensors file or truncated (bad header length)")
            header = json.loads(fh.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"not a safetensors file ({exc})") from exc
    metadata = header.pop("__metadata__", None) or {}
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(path, f"truncated: tensors need {8 + n + end} bytes, the file has {size}")
    return list(header), metadata


def _read_json(path: pathlib.Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"invalid JSON ({exc})") from exc


def open_checkpoint(path: str | os.PathLike) -> CheckpointSource:
    """A single ``.safetensors`` file, or a folder holding ``config.json`` and
    ``diffusion_pytorch_model*.safetensors`` (sharded with an index, or one file)."""
    path = pathlib.Path(path)
    if path.is_dir():
        config = _read_json(path / "config.json")
        if config is None:
            raise CheckpointError(path, "folder has no config.json (expected a diffusers transformer folder)")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(path, "folder has no .safetensors files")
        extra = _read_json(path / "hf_quant_config.json")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(path, "only .safetensors files can be loaded")
        files, config, extra = [path], None, None
    else:
        raise CheckpointError(path, "no such file or folder")
    source = CheckpointSource(path=path, files=files, config=config, extra_config=extra, metadata={})
    for f in files:
        keys, metadata = _read_header(f)
        source.metadata.update(metadata)
        for k in keys:
            source.key_file[k] = f
    return source
