"""A compiled NVFP4 layer with a LoRA side branch: changing LoRA strength does not recompile.

Runs in a subprocess that imports real ComfyUI (COMFYUI_PATH) on the CPU; torch.compile with the
aot_eager backend (no C++ toolchain needed). The GPU measurement (full FLUX, Inductor) is separate.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

from markers import COMFYUI_PATH, requires_comfyui

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.util, sys, torch
sys.path.insert(0, {comfy!r})
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["probe", "--cpu"]
spec = importlib.util.spec_from_file_location("nvfp4_pack", {init!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["nvfp4_pack"] = pack; spec.loader.exec_module(pack)
from nvfp4_pack.nodes.ops import make_nvfp4_ops
from nvfp4_pack.kernels import nvfp4_quantize
from comfy.weight_adapter.lora import LoRAAdapter
from torch._dynamo.utils import counters
torch.manual_seed(0)
layer = make_nvfp4_ops("reference").Linear(64, 96, dtype=torch.bfloat16)
p, s, g = nvfp4_quantize(torch.randn(96, 64))
sd = {{"weight": p, "weight_scale": s, "weight_scale_2": g, "bias": torch.zeros(96, dtype=torch.bfloat16)}}
layer._load_from_state_dict(sd, "", {{}}, True, [], [], [])
lora = LoRAAdapter(set(), (torch.randn(96, 4), torch.randn(4, 64), None, None, None, None))
x = torch.randn(3, 64, dtype=torch.bfloat16)
torch._dynamo.reset(); counters.clear()
compiled = torch.compile(layer, backend="aot_eager")
outs = []
for strength in (1.0, 0.5, 0.0, 2.0):
    layer.set_patches([(strength, lora, 1.0, None, None)], "w", torch.device("cpu"))
    y = compiled(x)
    assert torch.equal(y, layer(x)), strength
    outs.append(y)
assert not torch.equal(outs[0], outs[1])
print("GRAPHS", counters["stats"]["unique_graphs"])
"""


@requires_comfyui
def test_changing_lora_strength_does_not_recompile():
    code = SCRIPT.format(comfy=COMFYUI_PATH, init=str(ROOT / "__init__.py"), root=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GRAPHS 1" in result.stdout, result.stdout
