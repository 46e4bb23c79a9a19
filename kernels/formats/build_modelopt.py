"""The ModelOpt method: ``mtq.quantize`` with calibration, ``export_hf_checkpoint``, then sglang's
mixed-layer rewrite (as sglang's ``build_modelopt_nvfp4_transformer`` does): quantizer tensors
dropped, the preset's bf16 layers put back from the base weights, config + header metadata with
``swap_weight_nibbles: false``.

It holds the whole model in memory (ModelOpt quantizes a live model): full FLUX.1-dev needs
~24 GB for the bf16 weights plus calibration activations, more than the weight-only method.
Calibration runs the transformer on conditioning made from the user's prompts, which needs
FLUX's text encoders; ``random`` calibrates on random conditioning (for tests: the weights come
out the same, the activation scales mean nothing).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import pathlib
import tempfile
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .build import BuildSummary, _prepare_output, folder_written_atomically
from .errors import CheckpointError
from .source import open_checkpoint

MODELOPT_EXCLUDES = ("*x_embedder*", "*context_embedder*", "*time_text_embed*", "*norm_out*", "proj_out*")
# layers sglang's FLUX.1 preset keeps in bf16 (diffusers names)
SGLANG_BF16 = ("*.norm1.linear", "*.norm1_context.linear", "*.norm.linear", "*.ff.*", "*.ff_context.*", "*.proj_mlp")
BF16_BY_PRESET = {"sglang-flux1": SGLANG_BF16, "all-linear": ()}


def _calibration_loop(model, calibration: str, text_encoders: str | None):
    cfg = model.config
    if calibration == "random":

        def loop(m):
            g = torch.Generator().manual_seed(0)
            for _ in range(2):
                m(hidden_states=torch.randn(1, 64, cfg.in_channels, generator=g).to(m.dtype),
                  encoder_hidden_states=torch.randn(1, 32, cfg.joint_attention_dim, generator=g).to(m.dtype),
                  pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g).to(m.dtype),
                  timestep=torch.tensor([0.5]), img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(32, 3),
                  guidance=torch.tensor([3.5]) if cfg.guidance_embeds else None)  # fmt: skip

        return loop
    prompts_file = pathlib.Path(calibration)
    if not prompts_file.is_file():
        raise ValueError(f"{calibration}: calibration must be a text file of prompts (one per line) or 'random'")
    if not text_encoders or not pathlib.Path(text_encoders).is_dir():
        raise ValueError(
            "ModelOpt calibration runs FLUX on your prompts, which needs FLUX.1's text encoders (T5-XXL and "
            f"CLIP-L, diffusers folders text_encoder/ and text_encoder_2/); none found at {text_encoders!r}. "
            "Pass --text-encoders, use --calibration random, or use the weight-only method."
        )
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    root = pathlib.Path(text_encoders)
    clip_tok = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    clip = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True)
    t5_tok = T5TokenizerFast.from_pretrained(root / "tokenizer_2", local_files_only=True)
    t5 = T5EncoderModel.from_pretrained(root / "text_encoder_2", local_files_only=True)
    prompts = [p.strip() for p in prompts_file.read_text().splitlines() if p.strip()]

    def loop(m):
        g = torch.Generator().manual_seed(0)
        for prompt in prompts:
            with torch.no_grad():
                pooled = clip(
                    **clip_tok(prompt, return_tensors="pt", padding="max_length", truncation=True)
                ).pooler_output
                text = t5(**t5_tok(prompt, return_tensors="pt", padding="max_length", max_length=512,
                                   truncation=True)).last_hidden_state  # fmt: skip
            m(hidden_states=torch.randn(1, 1024, cfg.in_channels, generator=g).to(m.dtype),
              encoder_hidden_states=text.to(m.dtype), pooled_projections=pooled.to(m.dtype),
              timestep=torch.tensor([0.5]), img_ids=torch.zeros(1024, 3), txt_ids=torch.zeros(text.shape[1], 3),
              guidance=torch.tensor([3.5]) if cfg.guidance_embeds else None)  # fmt: skip

    return loop


def build_with_modelopt(
    src_path, output, *, preset: str = "sglang-flux1", calibration: str | None = None,
    text_encoders: str | None = None, overwrite: bool = False,
) -> BuildSummary:  # fmt: skip
    """Quantize a diffusers FLUX.1 transformer folder with ModelOpt and write sglang's mixed layout."""
    t0 = time.time()
    src = open_checkpoint(src_path)
    if src.config is None:
        raise CheckpointError(src.path, "the modelopt method needs a diffusers transformer folder")
    if preset not in BF16_BY_PRESET:
        raise ValueError(f"unknown preset {preset!r}; choose {sorted(BF16_BY_PRESET)}")
    if calibration is None:
        raise ValueError("the modelopt method calibrates: pass --calibration prompts.txt (with --text-encoders) "
                         "or --calibration random")  # fmt: skip
    output = pathlib.Path(output)
    _prepare_output(output, src.files, overwrite)

    import modelopt.torch.quantization as mtq
    from diffusers import FluxTransformer2DModel
    from modelopt.torch.export import export_hf_checkpoint

    model = FluxTransformer2DModel.from_pretrained(str(src.path), torch_dtype=torch.bfloat16)
    loop = _calibration_loop(model, calibration, text_encoders)
    cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    quant_cfg = cfg["quant_cfg"]
    if isinstance(quant_cfg, list):
        quant_cfg.extend({"quantizer_name": p, "enable": False} for p in MODELOPT_EXCLUDES)
    else:
        quant_cfg.update({p: {"enable": False} for p in MODELOPT_EXCLUDES})
    mtq.quantize(model, cfg, forward_loop=loop)
    with folder_written_atomically(output) as partial, tempfile.TemporaryDirectory() as tmp:
        export_hf_checkpoint(model, export_dir=tmp)
        del model
        summary = _mixed_rewrite(pathlib.Path(tmp), partial, src, BF16_BY_PRESET[preset])
    summary.output = str(output)
    summary.bytes_in = src.size_bytes()
    summary.seconds = time.time() - t0
    return summary


def _mixed_rewrite(export_dir: pathlib.Path, out_dir: pathlib.Path, src, bf16_patterns) -> BuildSummary:
    tensors = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                tensors[k] = h.get_tensor(k)
    quantized = {k[: -len(".weight_scale")] for k in tensors if k.endswith(".weight_scale")}
    back_to_bf16 = {layer for layer in quantized if any(fnmatch.fnmatchcase(layer, p) for p in bf16_patterns)}
    out = {}
    for key, value in tensors.items():
        layer, _, leaf = key.rpartition(".")
        if layer in back_to_bf16:
            if leaf in ("weight", "bias"):
                out[key] = src.get(key)  # the base bf16 weights
            continue
        if "_quantizer" in key or leaf.endswith("_amax"):
            continue  # quantizer state, not weights
        out[key] = value
    config = json.loads((export_dir / "config.json").read_text())
    qc = config.setdefault("quantization_config", {})
    qc["ignore"] = sorted(set(qc.get("ignore", [])) | back_to_bf16)
    qc["quant_type"] = "NVFP4"
    qc["swap_weight_nibbles"] = False
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    save_file(
        out, str(out_dir / "diffusion_pytorch_model.safetensors"), metadata={"quantization_config": json.dumps(qc)}
    )
    summary = BuildSummary(str(out_dir))
    summary.layers_quantized = len(quantized - back_to_bf16)
    summary.bytes_out = sum(f.stat().st_size for f in out_dir.iterdir())
    return summary
