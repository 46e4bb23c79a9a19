"""Any supported FLUX.1 checkpoint -> one BFL-named state dict in the pack's NVFP4 conventions.

Layouts (auto-detected):

* ``modelopt``: diffusers names, ``config.json`` ``quantization_config`` (quant_method
  modelopt, quant_algo NVFP4), even-k element in the low nibble, linear scales;
* ``sglang``: the same files plus ``quant_type`` / ``swap_weight_nibbles`` (also possibly in the
  safetensors header, or an older ``hf_quant_config.json``); nibbles swapped when it says so;
* ``comfyui``: BFL names, ``<layer>.comfy_quant`` markers, even element in the **high** nibble
  (comfy-kitchen's default) and scales in cuBLAS's 128x4 tiled layout;
* ``bf16``: a plain FLUX.1 file (BFL or diffusers names), nothing quantized.

Output conventions (what :mod:`nodes.ops` loads), per BFL linear ``L``:

* dense: ``L.weight`` (+ ``L.bias``);
* NVFP4: ``L.weight`` uint8 ``[N, K/2]`` low-nibble-first, ``L.weight_scale`` e4m3 ``[N, K/16]``
  linear, ``L.weight_scale_2`` float32 0-d (or ``[N]`` when fused parts had different global
  scales: a per-output-channel alpha, never their max), optional ``L.input_scale``, ``L.bias``;
* fused parts of both kinds (e.g. ``linear1`` with NVFP4 q/k/v and a bf16 ``proj_mlp``): the
  NVFP4 rows as above, the dense rows in ``L.dense_weight``, and ``L.segments`` (int64
  ``[S, 2]``: ``(is_fp4, rows)`` in output order), so the output is exactly the concatenation.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..e2m1 import swap_nibbles
from ..nvfp4 import nvfp4_dequantize
from ..scale_layout import swizzled_shape, unswizzle_scales
from .errors import CheckpointError
from .flux_keys import diffusers_linear_maps, diffusers_other_keys
from .source import CheckpointSource, open_checkpoint

log = logging.getLogger("nvfp4_flux")

QUANT_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale")
# ComfyUI's model detection reads the shapes of these: they must be dense (dequantized if needed)
DETECTION_LAYERS = ("img_in", "txt_in", "vector_in.in_layer")
_STRIP_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_E4M3_NAN = (0x7F, 0xFF)


@dataclass
class Layout:
    producer: str  # modelopt | sglang | comfyui | bf16
    naming: str  # diffusers | bfl
    nibble_order: str  # lo | hi  (as stored in the file)
    scale_layout: str  # linear | swizzled (as stored in the file)
    evidence: list[str] = field(default_factory=list)


@dataclass
class FluxStateDict:
    tensors: dict[str, torch.Tensor]
    layout: Layout
    fp4_layers: list[str]
    dense_layers: list[str]
    mixed_layers: list[str]
    source: CheckpointSource

    @property
    def variant(self) -> str:
        return "dev" if "guidance_in.in_layer.weight" in self.tensors else "schnell"


ProgressFn = Callable[[int, int], None]


# ----------------------------------------------------------------------------- detection


def _json_claim(raw) -> dict | None:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _quant_claims(src: CheckpointSource) -> list[tuple[str, dict]]:
    claims = []
    if src.config and isinstance(src.config.get("quantization_config"), dict):
        claims.append(("config.json quantization_config", src.config["quantization_config"]))
    meta = _json_claim(src.metadata.get("quantization_config"))
    if meta is not None:
        claims.append(("safetensors header quantization_config", meta))
    qmeta = _json_claim(src.metadata.get("_quantization_metadata"))
    if qmeta is not None and "layers" not in qmeta:  # sglang's form (ComfyUI's own has "layers")
        claims.append(("safetensors header _quantization_metadata", qmeta))
    if src.extra_config and isinstance(src.extra_config.get("quantization"), dict):
        q = src.extra_config["quantization"]
        claims.append(("hf_quant_config.json", {"quant_algo": q.get("quant_algo"), "group_size": q.get("group_size"),
                                                "ignore": q.get("exclude_modules", [])}))  # fmt: skip
    return claims


def _check_claim(path, where: str, claim: dict) -> None:
    algo = claim.get("quant_algo") or claim.get("quant_type")
    if algo is not None and str(algo).upper() != "NVFP4":
        raise CheckpointError(path, f"{where}: quant_algo {algo!r} is not supported (this loader reads NVFP4)")
    group = claim.get("group_size")
    groups = claim.get("config_groups")
    if isinstance(groups, dict):
        group = ((groups.get("group_0") or {}).get("weights") or {}).get("group_size", group)
    if group is not None and int(group) != 16:
        raise CheckpointError(path, f"{where}: NVFP4 group_size {group} (expected 16)")


def detect_layout(src: CheckpointSource) -> Layout:
    keys = [strip_prefix(k) for k in src.keys]
    if any(k.startswith(("double_stream_modulation", "double_blocks.0.img_mlp.gate_proj")) for k in keys):
        raise CheckpointError(src.path, "this is not FLUX.1 (FLUX.2/other DiT keys found); the loader reads FLUX.1")
    bfl = any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys)
    diffusers = any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in keys)
    if not (bfl or diffusers) or not any(k.startswith(("img_in.", "x_embedder.")) for k in keys):
        raise CheckpointError(src.path, "not a FLUX.1 transformer (no double_blocks/transformer_blocks and img_in)")
    naming = "bfl" if bfl else "diffusers"
    has_quant = any(k.endswith(".weight_scale") for k in keys)
    comfy_markers = any(k.endswith(".comfy_quant") for k in keys)
    claims = _quant_claims(src)
    for where, claim in claims:
        _check_claim(src.path, where, claim)

    if comfy_markers:
        return Layout("comfyui", naming, "hi", "swizzled", ["<layer>.comfy_quant markers"])
    if not has_quant:
        if claims:
            raise CheckpointError(src.path, f"{claims[0][0]} says NVFP4 but no layer has weight_scale")
        return Layout("bf16", naming, "lo", "linear", ["no weight_scale tensors"])

    swaps = {where: bool(c["swap_weight_nibbles"]) for where, c in claims if "swap_weight_nibbles" in c}
    if len(set(swaps.values())) > 1:
        detail = ", ".join(f"{w} says swap_weight_nibbles={v}" for w, v in swaps.items())
        raise CheckpointError(src.path, f"nibble order contradicts itself: {detail}")
    sglang = any("swap_weight_nibbles" in c or "quant_type" in c for _, c in claims)
    producer = "sglang" if sglang else "modelopt"
    order = "hi" if any(swaps.values()) else "lo"
    evidence = [w for w, _ in claims] or ["weight_scale tensors without a config: ModelOpt's low-nibble-first order"]
    return Layout(producer, naming, order, "linear", evidence)


def strip_prefix(key: str) -> str:
    """A key without the ``model.diffusion_model.`` / ``diffusion_model.`` prefix of full checkpoints."""
    for p in _STRIP_PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


# ----------------------------------------------------------------------------- one linear


@dataclass
class _Part:
    name: str
    rows: int
    dense: torch.Tensor | None = None  # [rows, K]
    packed: torch.Tensor | None = None  # u8 [rows, K/2], low nibble first
    scale: torch.Tensor | None = None  # e4m3 [rows, K/16], linear
    alpha: torch.Tensor | None = None  # f32 0-d
    input_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def fp4(self) -> bool:
        return self.packed is not None


class _Reader:
    def __init__(self, src: CheckpointSource, layout: Layout, progress: ProgressFn | None) -> None:
        self.src, self.layout, self.progress = src, layout, progress
        self.index = {strip_prefix(k): k for k in src.keys}
        self.used: set[str] = set()
        self.done = 0

    def has(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> torch.Tensor:
        self.used.add(key)
        t = self.src.get(self.index[key])
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.index))
        return t

    def part(self, name: str) -> _Part:
        if not self.has(f"{name}.weight"):
            raise CheckpointError(self.src.path, "missing weight", layer=name)
        if self.has(f"{name}.comfy_quant"):
            self._check_comfy_quant(name)
        bias = self.get(f"{name}.bias") if self.has(f"{name}.bias") else None
        if not self.has(f"{name}.weight_scale"):
            if self.has(f"{name}.weight_scale_2"):
                raise CheckpointError(self.src.path, "has weight_scale_2 but no weight_scale", layer=name)
            w = self.get(f"{name}.weight")
            return _Part(name, w.shape[0], dense=w, bias=bias)
        if not self.has(f"{name}.weight_scale_2"):
            raise CheckpointError(self.src.path, "NVFP4 layer lacks weight_scale_2 (the global scale)", layer=name)
        packed = self.get(f"{name}.weight")
        scale = self.get(f"{name}.weight_scale")
        alpha = self.get(f"{name}.weight_scale_2")
        input_scale = self.get(f"{name}.input_scale") if self.has(f"{name}.input_scale") else None
        packed, scale, alpha = self._validate(name, packed, scale, alpha, input_scale)
        return _Part(name, packed.shape[0], packed=packed, scale=scale, alpha=alpha, input_scale=input_scale,
                     bias=bias)  # fmt: skip

    def _check_comfy_quant(self, name: str) -> None:
        raw = self.get(f"{name}.comfy_quant")
        try:
            conf = json.loads(bytes(raw.to(torch.uint8).tolist()).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(self.src.path, f"unreadable comfy_quant marker ({exc})", layer=name) from exc
        fmt = conf.get("format")
        if fmt != "nvfp4":
            raise CheckpointError(self.src.path, f"ComfyUI quant format {fmt!r} is not NVFP4", layer=name)

    def _validate(self, name, packed, scale, alpha, input_scale):
        path = self.src.path
        if packed.dtype != torch.uint8 or packed.ndim != 2:
            raise CheckpointError(path, f"packed weight must be uint8 [N, K/2], got {packed.dtype} "
                                  f"{list(packed.shape)}", layer=name)  # fmt: skip
        n, k = packed.shape[0], packed.shape[1] * 2
        if k % 16:
            raise CheckpointError(path, f"K = {k} is not a multiple of 16", layer=name)
        if scale.dtype == torch.uint8:
            scale = scale.view(torch.float8_e4m3fn)
        if scale.dtype != torch.float8_e4m3fn:
            raise CheckpointError(path, f"weight_scale must be float8_e4m3fn, got {scale.dtype}", layer=name)
        if self.layout.scale_layout == "swizzled":
            if scale.numel() != math.prod(swizzled_shape(n, k // 16)):
                raise CheckpointError(path, f"weight_scale {list(scale.shape)} does not fit the tiled layout of a "
                                      f"[{n}, {k}] weight", layer=name)  # fmt: skip
            scale = unswizzle_scales(scale, n, k // 16)
        elif list(scale.shape) != [n, k // 16]:
            raise CheckpointError(path, f"weight_scale shape {list(scale.shape)}, expected [{n}, {k // 16}] for "
                                  f"weight {list(packed.shape)}", layer=name)  # fmt: skip
        bits = scale.view(torch.uint8)
        if any(bool((bits == nan).any()) for nan in _E4M3_NAN):
            raise CheckpointError(path, "weight_scale holds NaN", layer=name)
        if alpha.numel() != 1 or not alpha.is_floating_point():
            raise CheckpointError(path, f"weight_scale_2 must be one float, got {alpha.dtype} {list(alpha.shape)}",
                                  layer=name)  # fmt: skip
        alpha = alpha.reshape(()).to(torch.float32)
        if not torch.isfinite(alpha) or alpha <= 0:
            raise CheckpointError(path, f"weight_scale_2 is {alpha.item()} (must be finite and > 0)", layer=name)
        if input_scale is not None and (input_scale.numel() != 1 or not torch.isfinite(input_scale).all()):
            raise CheckpointError(path, "input_scale must be one finite float", layer=name)
        if self.layout.nibble_order == "hi":
            packed = swap_nibbles(packed)
        return packed, scale.contiguous(), alpha


# ----------------------------------------------------------------------------- fusion


def _fuse(bfl: str, parts: list[_Part], swap_halves: bool, out: dict[str, torch.Tensor]) -> str:
    """Write one BFL linear from its parts; returns its kind: fp4 | dense | mixed."""
    if swap_halves:
        parts = [_swap_rows(p) for p in parts]
    biases = [p.bias for p in parts]
    if any(b is not None for b in biases):
        if any(b is None for b in biases):
            dtype = next(b for b in biases if b is not None).dtype
            biases = [torch.zeros(p.rows, dtype=dtype) if b is None else b for p, b in zip(parts, biases, strict=True)]
        out[f"{bfl}.bias"] = torch.cat(biases)
    fp4 = [p for p in parts if p.fp4]
    dense = [p for p in parts if not p.fp4]
    if not fp4:
        out[f"{bfl}.weight"] = torch.cat([p.dense for p in dense])
        return "dense"
    out[f"{bfl}.weight"] = torch.cat([p.packed for p in fp4])
    out[f"{bfl}.weight_scale"] = torch.cat([p.scale for p in fp4])
    alphas = [p.alpha for p in fp4]
    if all(torch.equal(a, alphas[0]) for a in alphas):
        out[f"{bfl}.weight_scale_2"] = alphas[0]
    else:  # different global scales: one alpha per output row
        out[f"{bfl}.weight_scale_2"] = torch.cat([a.expand(p.rows) for a, p in zip(alphas, fp4, strict=True)])
    scales = [p.input_scale for p in fp4 if p.input_scale is not None]
    if scales:  # one static activation scale per GEMM: the largest keeps every part unclipped
        out[f"{bfl}.input_scale"] = torch.stack([s.reshape(()).float() for s in scales]).max()
    if not dense:
        return "fp4"
    out[f"{bfl}.dense_weight"] = torch.cat([p.dense for p in dense])
    out[f"{bfl}.segments"] = torch.tensor([[int(p.fp4), p.rows] for p in parts], dtype=torch.int64)
    return "mixed"


def _swap_rows(p: _Part) -> _Part:
    """(scale, shift) -> (shift, scale): swap the two row halves of every tensor of the part."""

    def sw(t):
        if t is None or t.ndim == 0:
            return t
        h = t.shape[0] // 2
        return torch.cat([t[h:], t[:h]])

    return _Part(p.name, p.rows, sw(p.dense), sw(p.packed), sw(p.scale), p.alpha, p.input_scale, sw(p.bias))


# ----------------------------------------------------------------------------- entry point


def load_flux_state_dict(path, progress: ProgressFn | None = None) -> FluxStateDict:
    """Read and convert a checkpoint (see module docstring). Everything stays on the CPU."""
    src = open_checkpoint(path)
    layout = detect_layout(src)
    reader = _Reader(src, layout, progress)
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, list[str]] = {"fp4": [], "dense": [], "mixed": []}
    keys = list(reader.index)
    if layout.naming == "diffusers":
        for m in diffusers_linear_maps(keys):
            if not reader.has(f"{m.parts[0]}.weight"):
                if m.bfl.startswith("guidance_in"):  # schnell has no guidance embedder
                    continue
                raise CheckpointError(src.path, "missing weight", layer=m.parts[0])
            kinds[_fuse(m.bfl, [reader.part(p) for p in m.parts], m.swap_halves, tensors)].append(m.bfl)
        for d, b in diffusers_other_keys(keys).items():
            if reader.has(d):
                tensors[b] = reader.get(d)
    else:
        layers = sorted({k.rsplit(".", 1)[0] for k in keys if k.endswith(".weight")})
        for layer in layers:
            part = reader.part(layer)
            if part.dense is not None and part.dense.ndim != 2:  # norms, not linears
                tensors[f"{layer}.weight"] = part.dense
                if part.bias is not None:
                    tensors[f"{layer}.bias"] = part.bias
                continue
            kinds[_fuse(layer, [part], False, tensors)].append(layer)
        for k in keys:
            if k not in reader.used and not k.endswith((".comfy_quant", *QUANT_SUFFIXES)):
                tensors[k] = reader.get(k)
    for layer in DETECTION_LAYERS:
        if f"{layer}.weight_scale" in tensors:  # exact: NVFP4 values are exact in bf16
            tensors[f"{layer}.weight"] = nvfp4_dequantize(
                tensors.pop(f"{layer}.weight"), tensors.pop(f"{layer}.weight_scale"),
                tensors.pop(f"{layer}.weight_scale_2"), dtype=torch.bfloat16,
            )  # fmt: skip
            tensors.pop(f"{layer}.input_scale", None)
            kinds["fp4"].remove(layer)
            kinds["dense"].append(layer)
            log.info("NVFP4 loader: %s dequantized to bf16 (ComfyUI reads its shape to detect the model)", layer)
    left = sorted(k for k in keys if k not in reader.used and not k.endswith(".comfy_quant"))
    if left:
        log.info("NVFP4 loader: %d tensors of %s not used (e.g. %s)", len(left), src.path, left[:3])
    return FluxStateDict(tensors, layout, kinds["fp4"], kinds["dense"], kinds["mixed"], src)
