"""``FP4Linear``: a linear layer whose weight stays NVFP4 in memory.

Buffers (the state_dict keys, named as in ModelOpt/ComfyUI files):

* ``weight``: uint8 ``[N, K/2]``, E2M1 codes, even-k element in the low nibble;
* ``weight_scale``: float8_e4m3fn ``[N, K/16]``, linear layout;
* ``weight_scale_2``: float32, 0-d or ``[N]``: the global scale, called alpha by the op;
* ``bias``: ``[N]`` in the compute dtype, or absent;
* ``input_scale``: float32 0-d, the static activation scale a calibrated checkpoint carries
  (used by backends with NVFP4 activations), or absent.

``.to(device)`` / ``.cuda()`` move all of them together. ``.to(dtype)`` casts only the
bias: packed codes, e4m3 scales and the float32 global scale keep their dtypes.

:meth:`FP4Linear.prepare` picks the backend and computes, once, what it wants beyond the
NVFP4 tensors (a non-persistent ``aux`` buffer, e.g. W4A8's per-row FP8 shift). The
``fp8_resident`` backend instead replaces the weight by its FP8 decode (1 byte per weight,
``weight_scale`` emptied, ``weight_scale_2`` = per-row FP8 scales); such a module's
state_dict is no longer NVFP4.

``lora``: an optional side branch ``(down, up)`` in the backend's form (:func:`prepare_lora`),
added by the op to every forward; ``None`` (the default) for none. Not part of the state_dict.
"""

from __future__ import annotations

import torch
from torch import nn

from .fp4_linear_op import fp4_linear
from .keep_dtypes import KeepQuantDtypes
from .nvfp4 import BLOCK_SIZE, nvfp4_dequantize, nvfp4_quantize


@torch.no_grad()
def prepare_for_backend(
    backend: str, weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(weight, weight_scale, weight_scale_2, aux)`` as ``backend`` wants them, computed once.

    Most backends keep the NVFP4 tensors and may add an ``aux`` tensor (W4A8: the per-row FP8
    shift). ``fp8_resident`` returns the FP8 decode instead: e4m3 ``[N, K]``, an empty scale
    tensor and per-row FP8 scales ``[N]``.
    """
    from .backends import PREPARERS, get_backend

    get_backend(backend)  # unknown names fail here, not in the first forward
    if weight.dtype != torch.uint8 and backend != "fp8_resident":
        raise ValueError("this layer was made fp8-resident; reload the NVFP4 weights to change backend")
    if backend == "fp8_resident" and weight.dtype == torch.uint8:
        from .backends.w4a8 import make_fp8_resident

        n = weight.shape[0]
        weight, weight_scale_2 = make_fp8_resident(weight, weight_scale, weight_scale_2)
        weight_scale = weight_scale.new_empty((n, 0))
    prepare = PREPARERS.get(backend)
    return weight, weight_scale, weight_scale_2, prepare(weight_scale) if prepare is not None else None


@torch.no_grad()
def prepare_lora(
    backend: str,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    aux: torch.Tensor | None,
    down: torch.Tensor,
    up: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA branch ``(down [R, K], up [N, R])`` (any float dtype, strength folded in) in the form
    ``backend`` computes with: the op's ``lora`` argument for activations in ``dtype``. Made on
    ``down``'s device; the layer's tensors are as :func:`prepare_for_backend` left them (``weight``
    is only read for its dtype and shape, so it may stay where it is)."""
    from .backends import LORA_PREPARERS, get_backend, plain_lora

    get_backend(backend)
    dev = down.device
    weight_scale, weight_scale_2 = weight_scale.to(dev), weight_scale_2.to(dev)  # (weight: dtype, shape only)
    aux = None if aux is None else aux.to(dev)
    make = LORA_PREPARERS.get(backend, plain_lora)
    return make(weight, weight_scale, weight_scale_2, aux, down.to(torch.float32), up.to(dev, torch.float32), dtype)


class FP4Linear(KeepQuantDtypes, nn.Module):
    """``y = x @ W^T + b`` with ``W`` stored as NVFP4 (see module docstring for layouts)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.bfloat16,
        backend: str = "reference",
    ) -> None:
        super().__init__()
        if in_features % BLOCK_SIZE:
            raise ValueError(f"in_features = {in_features} is not a multiple of {BLOCK_SIZE}")
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer(
            "weight_scale",
            torch.ones(out_features, in_features // BLOCK_SIZE, device=device).to(torch.float8_e4m3fn),
        )
        self.register_buffer("weight_scale_2", torch.ones((), dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None
        self.register_buffer("aux", None, persistent=False)
        self.register_buffer("input_scale", None)
        self.lora: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str = "reference") -> FP4Linear:
        """Quantize a dense ``nn.Linear`` with ModelOpt's weight math."""
        packed, block_scale, global_scale = nvfp4_quantize(linear.weight.detach())
        return cls.from_quantized(
            packed,
            block_scale,
            global_scale,
            None if linear.bias is None else linear.bias.detach(),
            backend=backend,
        )

    @classmethod
    def from_quantized(
        cls,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_scale_2: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        backend: str = "reference",
        input_scale: torch.Tensor | None = None,
    ) -> FP4Linear:
        """Wrap already-quantized tensors (layouts as in the module docstring)."""
        n, half_k = weight.shape
        module = cls(half_k * 2, n, bias is not None, device="meta", backend=backend)
        module.weight = weight
        module.weight_scale = weight_scale
        module.weight_scale_2 = weight_scale_2.to(torch.float32)
        if bias is not None:
            module.bias = bias
        if input_scale is not None:
            module.input_scale = input_scale.to(torch.float32).reshape(())
        module._check_shapes()
        return module

    def _check_shapes(self) -> None:
        n, k = self.out_features, self.in_features
        expected = {  # the NVFP4 layout (before any fp8_resident conversion)
            "weight": ((n, k // 2), torch.uint8),
            "weight_scale": ((n, k // BLOCK_SIZE), torch.float8_e4m3fn),
        }
        for name, (shape, dtype) in expected.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"{name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
        if self.weight_scale_2.ndim not in (0, 1) or self.weight_scale_2.numel() not in (1, n):
            raise ValueError(f"weight_scale_2 must be 0-d or [{n}], got {tuple(self.weight_scale_2.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp4_linear(x, self.weight, self.weight_scale, self.weight_scale_2, self.bias, self.backend, self.aux,
                          self.lora, self.input_scale)  # fmt: skip

    @torch.no_grad()
    def prepare(self, backend: str) -> FP4Linear:
        """Use ``backend`` from now on and compute its load-time data (see module docstring)."""
        self.weight, self.weight_scale, self.weight_scale_2, self.aux = prepare_for_backend(
            backend, self.weight, self.weight_scale, self.weight_scale_2
        )
        self.backend = backend
        return self

    def dequantized_weight(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The dense ``[N, K]`` weight this module computes with."""
        return nvfp4_dequantize(self.weight, self.weight_scale, self.weight_scale_2, dtype=dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, backend={self.backend!r}"
        )
