"""Write the example workflows (UI format for the graph editor, API format for scripts and tests)
from one graph description, so the two formats always describe the same graph.

  python tools/make_workflows.py          # rewrites workflows/*.json
"""

from __future__ import annotations

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"

MODELS = {  # public files ComfyUI can offer to download (properties.models of the loader nodes)
    "clip_l.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                           "text_encoders"),
    "t5xxl_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
        "text_encoders"),
    "ae.safetensors": ("https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors", "vae"),
}  # fmt: skip
PROMPT = "a red fox reading a newspaper in a sunlit cafe, photograph, 35mm"


def graph(compile_model: bool, lora: bool = False) -> list[dict]:
    """Nodes: id, type, widgets (ordered name -> value), links (input -> (node id, slot, type)), outputs."""
    model_src = 3 if compile_model else 2
    warmup_src = 13 if lora else 1
    nodes = [
        dict(id=1, type="NVFP4FluxLoader", outputs=["MODEL"],
             widgets={"model_name": "flux1-dev-nvfp4.safetensors", "backend": "auto", "compute_dtype": "bf16"}),
        dict(id=2, type="NVFP4Warmup", outputs=["MODEL"], links={"model": (warmup_src, 0, "MODEL")},
             widgets={"width": 1024, "height": 1024, "batch_size": 1, "text_tokens": 512}),
        dict(id=4, type="DualCLIPLoader", outputs=["CLIP"],
             widgets={"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux",
                      "device": "default"}),
        dict(id=5, type="CLIPTextEncode", outputs=["CONDITIONING"], links={"clip": (4, 0, "CLIP")},
             widgets={"text": PROMPT}),
        dict(id=6, type="FluxGuidance", outputs=["CONDITIONING"], links={"conditioning": (5, 0, "CONDITIONING")},
             widgets={"guidance": 3.5}),
        dict(id=7, type="ConditioningZeroOut", outputs=["CONDITIONING"],
             links={"conditioning": (5, 0, "CONDITIONING")}, widgets={}),
        dict(id=8, type="EmptySD3LatentImage", outputs=["LATENT"],
             widgets={"width": 1024, "height": 1024, "batch_size": 1}),
        dict(id=9, type="KSampler", outputs=["LATENT"],
             links={"model": (model_src, 0, "MODEL"), "positive": (6, 0, "CONDITIONING"),
                    "negative": (7, 0, "CONDITIONING"), "latent_image": (8, 0, "LATENT")},
             widgets={"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                      "denoise": 1.0}),
        dict(id=10, type="VAELoader", outputs=["VAE"], widgets={"vae_name": "ae.safetensors"}),
        dict(id=11, type="VAEDecode", outputs=["IMAGE"], links={"samples": (9, 0, "LATENT"), "vae": (10, 0, "VAE")},
             widgets={}),
        dict(id=12, type="SaveImage", outputs=[], links={"images": (11, 0, "IMAGE")},
             widgets={"filename_prefix": "flux1-dev-nvfp4"}),
    ]  # fmt: skip
    if compile_model:
        nodes.insert(2, dict(id=3, type="TorchCompileModel", outputs=["MODEL"], links={"model": (2, 0, "MODEL")},
                             widgets={"backend": "inductor"}))  # fmt: skip
    if lora:  # ComfyUI's own LoRA node; on NVFP4 layers the LoRA runs as a side branch
        nodes.insert(1, dict(id=13, type="LoraLoaderModelOnly", outputs=["MODEL"], links={"model": (1, 0, "MODEL")},
                             widgets={"lora_name": "flux1-dev-lora.safetensors", "strength_model": 1.0}))  # fmt: skip
    return nodes


def to_api(nodes: list[dict]) -> dict:
    api = {}
    for n in nodes:
        inputs = dict(n["widgets"])
        inputs.update({name: [str(src), slot] for name, (src, slot, _) in n.get("links", {}).items()})
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return api


def to_ui(nodes: list[dict]) -> dict:
    links, ui_nodes = [], []
    by_id = {n["id"]: n for n in nodes}
    outgoing: dict[tuple[int, int], list[int]] = {}
    incoming: dict[tuple[int, str], int] = {}
    for n in nodes:
        for target_slot, (name, (src, slot, typ)) in enumerate(n.get("links", {}).items()):
            link_id = len(links) + 1
            links.append([link_id, src, slot, n["id"], target_slot, typ])
            outgoing.setdefault((src, slot), []).append(link_id)
            incoming[(n["id"], name)] = link_id
    for order, n in enumerate(nodes):
        widgets = []
        for name, value in n["widgets"].items():
            widgets.append(value)
            if name == "seed":
                widgets.append("fixed")  # the editor's control_after_generate value
        props = {"Node name for S&R": n["type"]}
        models = [{"name": v, "url": MODELS[v][0], "directory": MODELS[v][1]} for v in n["widgets"].values()
                  if isinstance(v, str) and v in MODELS]  # fmt: skip
        if models:
            props["models"] = models
        ui_nodes.append({
            "id": n["id"], "type": n["type"], "pos": [40 + 360 * (order % 4), 60 + 260 * (order // 4)],
            "size": [320, 140], "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": incoming[(n["id"], name)]}
                       for name, (_, _, typ) in n.get("links", {}).items()],
            "outputs": [{"name": typ, "type": typ, "links": outgoing.get((n["id"], slot), []), "slot_index": slot}
                        for slot, typ in enumerate(n["outputs"])],
            "properties": props, "widgets_values": widgets,
        })  # fmt: skip
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}  # fmt: skip


WORKFLOWS = {
    "flux1-dev-nvfp4-compile": (True, False),  # loader -> warmup -> TorchCompileModel -> KSampler
    "flux1-dev-nvfp4": (False, False),  # the same without compile (GPUs / Windows without Triton)
    "flux1-dev-nvfp4-lora": (True, True),  # loader -> LoraLoaderModelOnly -> warmup -> compile -> KSampler
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (compile_model, lora) in WORKFLOWS.items():
        nodes = graph(compile_model, lora)
        (OUT / f"{name}.json").write_text(json.dumps(to_ui(nodes), indent=1) + "\n")
        (OUT / f"{name}.api.json").write_text(json.dumps(to_api(nodes), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/{name}.api.json")


if __name__ == "__main__":
    main()
