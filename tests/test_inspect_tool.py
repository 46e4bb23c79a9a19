"""tools/inspect_checkpoint.py tells users which file is which."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import flux_fixtures as ff

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "inspect_checkpoint.py"


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def test_reports_comfy_native_layout(tmp_path, gen):
    dims = ff.Dims(128)
    layers = ff.block_linears(dims)
    qsd, _ = ff.quantize_layers(ff.bfl_bf16_state_dict(dims, gen), layers)
    path = tmp_path / "native.safetensors"
    ff.write_comfy_native(path, qsd, layers)
    result = run("--json", path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["producer"] == "comfyui" and info["scale_layout_in_file"] == "swizzled"
    assert "high nibble" in info["nibble_order_in_file"]
    assert sorted(info["nvfp4_layers"]) == sorted(layers)
    text = run(path)
    assert "NVFP4 (13)" in text.stdout and "FLUX.1-dev" in text.stdout


def test_bad_file_is_one_line_error_and_exit_1(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"garbage")
    result = run(path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: ") and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
