"""bf16 FLUX.1 -> mixed BF16+NVFP4 checkpoint, streamed tensor by tensor (weight-only, ModelOpt's math).

Output formats:

* ``comfyui`` (default): one ``.safetensors`` in BFL names, NVFP4 layers in ComfyUI's native
  layout (``<layer>.comfy_quant`` marker, high-nibble-first codes, cuBLAS-tiled scales). Both this
  pack's loader and ComfyUI's own loader read it.
* ``diffusers``: a folder with ``config.json`` (``quantization_config`` as ModelOpt and sglang write
  it: quant_method modelopt, quant_algo NVFP4, ignore list, ``swap_weight_nibbles: false``) and
  ``diffusion_pytorch_model.safetensors`` in ModelOpt's layout (low nibble first, linear scales).
  q/k/v (and add_q/k/v) share one global scale, as ModelOpt's export makes them.

Presets (which layers become NVFP4): ``all-linear`` (every block linear), ``sglang-flux1`` (the
attention projections and single blocks' output projection; modulation and feed-forward stay
bf16; in BFL output the single blocks' fused ``linear1`` stays bf16 because its ``proj_mlp`` part
does and one BFL tensor cannot hold both), or ``custom`` with glob patterns.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..e2m1 import swap_nibbles
from ..nvfp4 import nvfp4_dequantize, nvfp4_global_scale, nvfp4_quantize
from ..scale_layout import swizzle_scales, swizzled_shape
from .errors import CheckpointError
from .flux_keys import diffusers_linear_maps, diffusers_other_keys
from .flux_state_dict import strip_prefix
from .source import CheckpointSource, open_checkpoint
from .writer import StreamingSafetensorsWriter

BLOCK_LINEARS_BFL = (
    "double_blocks.*.img_mod.lin", "double_blocks.*.txt_mod.lin", "double_blocks.*.img_attn.qkv",
    "double_blocks.*.txt_attn.qkv", "double_blocks.*.img_attn.proj", "double_blocks.*.txt_attn.proj",
    "double_blocks.*.img_mlp.0", "double_blocks.*.img_mlp.2", "double_blocks.*.txt_mlp.0", "double_blocks.*.txt_mlp.2",
    "single_blocks.*.modulation.lin", "single_blocks.*.linear1", "single_blocks.*.linear2",
)  # fmt: skip
PRESETS_BFL = {
    "all-linear": BLOCK_LINEARS_BFL,
    "sglang-flux1": ("double_blocks.*.img_attn.qkv", "double_blocks.*.txt_attn.qkv", "double_blocks.*.img_attn.proj",
                     "double_blocks.*.txt_attn.proj", "single_blocks.*.linear2"),
}  # fmt: skip
# diffusers names: every linear inside the blocks / sglang's FLUX.1 preset
PRESETS_DIFFUSERS = {
    "all-linear": ("transformer_blocks.*", "single_transformer_blocks.*"),
    "sglang-flux1": ("transformer_blocks.*.attn.*", "single_transformer_blocks.*.attn.*",
                     "single_transformer_blocks.*.proj_out"),
}  # fmt: skip
log = logging.getLogger("nvfp4_flux")
QKV_GROUPS = (("attn.to_q", "attn.to_k", "attn.to_v"), ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))


@dataclass
class BuildSummary:
    output: str
    layers_quantized: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: dict[str, float] = field(default_factory=dict)  # layer -> relative weight error
    seconds: float = 0.0

    def lines(self) -> list[str]:
        errs = sorted(self.errors.values())
        stats = (f"mean {sum(errs) / len(errs):.4f}, median {errs[len(errs) // 2]:.4f}, max {errs[-1]:.4f}"
                 if errs else "-")  # fmt: skip
        return [
            f"wrote {self.output}",
            f"  layers quantized to NVFP4: {self.layers_quantized}",
            f"  size: {self.bytes_in / 1e9:.2f} GB -> {self.bytes_out / 1e9:.2f} GB",
            f"  relative weight error (Frobenius, per layer): {stats}",
            f"  time: {self.seconds:.0f} s",
        ]


@contextlib.contextmanager
def folder_written_atomically(output: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a fresh ``<output>.partial`` folder; on success it replaces ``output``, on any error
    (Ctrl-C included) it is removed and ``output`` is untouched."""
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)


def _selected(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _rel_err(w: torch.Tensor, packed, scale, gs) -> float:
    deq = nvfp4_dequantize(packed, scale, gs, dtype=torch.float32)
    wf = w.float()
    return ((deq - wf).norm() / wf.norm().clamp_min(1e-30)).item()


ProgressFn = Callable[[int, int, str], None]


def _prepare_output(output: pathlib.Path, inputs: list[pathlib.Path], overwrite: bool) -> None:
    for f in inputs:
        if output.exists() and os.path.samefile(output, f):
            raise CheckpointError(output, "the output would overwrite the input")
    if output.exists() and not overwrite:
        raise CheckpointError(output, "already exists (pass overwrite to replace it)")


def build_checkpoint(
    src_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    preset: str = "sglang-flux1",
    quantize: tuple[str, ...] = (),
    keep: tuple[str, ...] = (),
    out_format: str = "comfyui",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    device: str | torch.device = "cpu",
) -> BuildSummary:
    """Write a mixed BF16+NVFP4 checkpoint from a bf16 FLUX.1 (BFL file or diffusers folder).

    ``device``: where the quantization math runs (``"cuda"`` is much faster; same bytes)."""
    src = open_checkpoint(src_path)
    if any(k.endswith(".weight_scale") for k in src.keys):
        raise CheckpointError(src.path, "is already quantized; build from the bf16 FLUX.1 transformer")
    output = pathlib.Path(output)
    _prepare_output(output, src.files, overwrite)
    t0 = time.time()
    if out_format == "comfyui":
        summary = _build_bfl(src, output, preset, quantize, keep, progress, torch.device(device))
    elif out_format == "diffusers":
        summary = _build_diffusers(src, output, preset, quantize, keep, progress, torch.device(device))
    else:
        raise ValueError(f"unknown output format {out_format!r} (comfyui or diffusers)")
    summary.bytes_in = src.size_bytes()
    summary.seconds = time.time() - t0
    return summary


# ----------------------------------------------------------------------------- BFL / ComfyUI-native


def _bfl_plan(src: CheckpointSource) -> list[tuple[str, list[str]]]:
    """(BFL key, source keys concatenated along dim 0), in output order."""
    keys = [strip_prefix(k) for k in src.keys]
    back = {strip_prefix(k): k for k in src.keys}
    if any(k.startswith("double_blocks.") for k in keys):
        return [(k, [back[k]]) for k in keys]
    if not any(k.startswith("transformer_blocks.") for k in keys):
        raise CheckpointError(src.path, "not a FLUX.1 transformer (no double_blocks/transformer_blocks)")
    plan: list[tuple[str, list[str]]] = []
    used = set()
    for m in diffusers_linear_maps(keys):
        for leaf in ("weight", "bias"):
            parts = [f"{p}.{leaf}" for p in m.parts]
            if all(p in back for p in parts):
                plan.append((f"{m.bfl}.{leaf}", [back[p] for p in parts]))
                used.update(parts)
    for d, b in diffusers_other_keys(keys).items():
        if d in back:
            plan.append((b, [back[d]]))
            used.add(d)
    left = sorted(set(back) - used)
    if left:
        log.warning("%s: %d tensors have no FLUX.1 BFL name and are not written (e.g. %s)", src.path, len(left),
                    left[:3])  # fmt: skip
    return plan


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    h = t.shape[0] // 2
    return torch.cat([t[h:], t[:h]])


def _build_bfl(src, output, preset, quantize, keep, progress, device) -> BuildSummary:
    plan = _bfl_plan(src)
    patterns = quantize or PRESETS_BFL.get(preset)
    if patterns is None:
        raise ValueError(f"unknown preset {preset!r}; choose {sorted(PRESETS_BFL)} or give quantize patterns")
    marker = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    specs, todo = [], []
    for key, parts in plan:
        dtype, shape = _dtype_shape(src, parts)
        layer = key.rsplit(".", 1)[0]
        quant = (
            key.endswith(".weight") and len(shape) == 2 and _selected(layer, patterns) and not _selected(layer, keep)
        )
        if quant:
            n, k = shape
            specs += [(key, torch.uint8, (n, k // 2)), (f"{layer}.weight_scale", torch.float8_e4m3fn,
                      swizzled_shape(n, k // 16)), (f"{layer}.weight_scale_2", torch.float32, ()),
                      (f"{layer}.comfy_quant", torch.uint8, tuple(marker.shape))]  # fmt: skip
        else:
            specs.append((key, dtype, tuple(shape)))
        todo.append((key, parts, quant))
    summary = BuildSummary(str(output))
    with StreamingSafetensorsWriter(output, specs) as writer:
        for i, (key, parts, quant) in enumerate(todo):
            t = torch.cat([src.get(p) for p in parts]) if len(parts) > 1 else src.get(parts[0])
            if key.startswith("final_layer.adaLN_modulation.1.") and _is_diffusers(src):
                t = _swap_halves(t)  # diffusers (scale, shift) -> BFL (shift, scale)
            if quant:
                layer = key.rsplit(".", 1)[0]
                t = t.to(device)
                packed, scale, gs = nvfp4_quantize(t)
                summary.errors[layer] = _rel_err(t, packed, scale, gs)
                writer.write(key, swap_nibbles(packed))
                writer.write(f"{layer}.weight_scale", swizzle_scales(scale))
                writer.write(f"{layer}.weight_scale_2", gs)
                writer.write(f"{layer}.comfy_quant", marker.clone())
                summary.layers_quantized += 1
            else:
                writer.write(key, t)
            if progress is not None:
                progress(i + 1, len(todo), key)
    summary.bytes_out = output.stat().st_size
    return summary


def _is_diffusers(src: CheckpointSource) -> bool:
    return any(strip_prefix(k).startswith("transformer_blocks.") for k in src.keys)


def _dtype_shape(src: CheckpointSource, parts: list[str]) -> tuple[torch.dtype, list[int]]:
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    shapes = [src.dtype_and_shape(p) for p in parts]
    dtype = names.get(shapes[0][0])
    if dtype is None:
        raise CheckpointError(src.path, f"unexpected dtype {shapes[0][0]}", layer=parts[0])
    shape = list(shapes[0][1])
    shape[0] = sum(s[1][0] for s in shapes)
    return dtype, shape


# ----------------------------------------------------------------------------- diffusers / ModelOpt layout


def _build_diffusers(src, output, preset, quantize, keep, progress, device) -> BuildSummary:
    if not _is_diffusers(src) or src.config is None:
        raise CheckpointError(src.path, "diffusers output needs a diffusers transformer folder as input")
    patterns = quantize or PRESETS_DIFFUSERS.get(preset)
    if patterns is None:
        raise ValueError(f"unknown preset {preset!r}; choose {sorted(PRESETS_DIFFUSERS)} or give quantize patterns")
    keys = list(src.keys)
    linears = sorted({k[: -len(".weight")] for k in keys if k.endswith(".weight")
                      and len(src.dtype_and_shape(k)[1]) == 2})  # fmt: skip
    quant = {name for name in linears if _selected(name, patterns) and not _selected(name, keep)}
    if preset == "sglang-flux1" and not quantize:  # sglang keeps the single blocks' proj_mlp in bf16
        quant = {name for name in quant if not name.endswith(".proj_mlp")}
    group_of = {}
    for name in quant:
        for group in QKV_GROUPS:
            for member in group:
                if name.endswith("." + member):
                    prefix = name[: -len(member)]
                    group_of[name] = [prefix + g for g in group]
    specs = []
    for key in keys:
        dtype, shape = _dtype_shape(src, [key])
        layer, leaf = key.rsplit(".", 1)
        if layer in quant and leaf == "weight":
            n, k = shape
            specs += [(key, torch.uint8, (n, k // 2)), (f"{layer}.weight_scale", torch.float8_e4m3fn, (n, k // 16)),
                      (f"{layer}.weight_scale_2", torch.float32, ())]  # fmt: skip
        else:
            specs.append((key, dtype, tuple(shape)))
    with folder_written_atomically(output) as partial:
        summary = _write_diffusers(src, partial, specs, keys, quant, group_of, linears, progress, device)
    summary.output = str(output)
    return summary


def _write_diffusers(src, output, specs, keys, quant, group_of, linears, progress, device) -> BuildSummary:
    summary = BuildSummary(str(output))
    group_scales: dict[str, torch.Tensor] = {}
    with StreamingSafetensorsWriter(output / "diffusion_pytorch_model.safetensors", specs) as writer:
        for i, key in enumerate(keys):
            layer, leaf = key.rsplit(".", 1)
            t = src.get(key)
            if layer in quant and leaf == "weight":
                gs = None
                if layer in group_of and all(m in quant for m in group_of[layer]):
                    gkey = group_of[layer][0]
                    if gkey not in group_scales:  # ModelOpt's export: one amax for the fused q/k/v
                        group_scales[gkey] = torch.stack([nvfp4_global_scale(src.get(m + ".weight"))
                                                          for m in group_of[layer]]).max()  # fmt: skip
                    gs = group_scales[gkey]
                t = t.to(device)
                packed, scale, gs = nvfp4_quantize(t, global_scale=None if gs is None else gs.to(device))
                summary.errors[layer] = _rel_err(t, packed, scale, gs)
                writer.write(key, packed)
                writer.write(f"{layer}.weight_scale", scale)
                writer.write(f"{layer}.weight_scale_2", gs)
                summary.layers_quantized += 1
            else:
                writer.write(key, t)
            if progress is not None:
                progress(i + 1, len(keys), key)
    config = dict(src.config)
    config["quantization_config"] = {
        "quant_method": "modelopt", "quant_algo": "NVFP4", "quant_type": "NVFP4", "swap_weight_nibbles": False,
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "float", "group_size": 16}}},
        "ignore": sorted(set(linears) - quant), "producer": {"name": "comfyui-nvfp4-flux weight-only"},
    }  # fmt: skip
    (output / "config.json").write_text(json.dumps(config, indent=1))
    summary.bytes_out = sum(f.stat().st_size for f in output.iterdir())
    return summary
