"""The pack loads inside real ComfyUI (COMFYUI_PATH) with no import failure."""

from __future__ import annotations

from comfy_host import PACK_DIR_NAME, make_comfy_home
from markers import COMFYUI_PATH, requires_comfyui


@requires_comfyui
def test_pack_imports_inside_comfyui(tmp_path):
    home = make_comfy_home(tmp_path, COMFYUI_PATH)
    result = home.run_main("--quick-test-for-ci")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "IMPORT FAILED" not in log, log[-4000:]
    assert f"custom_nodes/{PACK_DIR_NAME}" in log, "the pack was not loaded at all:\n" + log[-4000:]
