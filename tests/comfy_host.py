"""Run real ComfyUI (from ``COMFYUI_PATH``) with this pack installed in a temporary folder.

Tests import this helper; they skip (with a reason) when ``COMFYUI_PATH`` is unset.
The pack is linked into ``<tmp>/custom_nodes/ComfyUI-NVFP4-FLUX`` and model folders are
added through an ``--extra-model-paths-config`` YAML, so the ComfyUI checkout is never
written to.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "ComfyUI-NVFP4-FLUX"
MODEL_FOLDERS = ("diffusion_models", "loras", "text_encoders", "vae")


@dataclass
class ComfyHome:
    """A temporary ComfyUI home: custom_nodes with this pack, model folders, a config YAML."""

    root: pathlib.Path
    comfyui: pathlib.Path

    @property
    def config(self) -> pathlib.Path:
        return self.root / "extra_model_paths.yaml"

    def models(self, folder: str) -> pathlib.Path:
        return self.root / "models" / folder

    def cli_args(self) -> list[str]:
        return [
            "--cpu",
            "--extra-model-paths-config",
            str(self.config),
            "--output-directory",
            str(self.root / "output"),
            "--temp-directory",
            str(self.root / "temp"),
            "--user-directory",
            str(self.root / "user"),
        ]

    def run_main(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``python main.py --cpu ... <extra>`` in the ComfyUI checkout; output captured."""
        return subprocess.run(
            [sys.executable, "main.py", *self.cli_args(), *extra],
            cwd=self.comfyui,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def make_comfy_home(tmp: pathlib.Path, comfyui: str | os.PathLike) -> ComfyHome:
    """Lay out a ComfyUI home under ``tmp`` with this pack linked into its custom_nodes."""
    home = ComfyHome(root=tmp, comfyui=pathlib.Path(comfyui))
    (tmp / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = tmp / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    for folder in MODEL_FOLDERS:
        home.models(folder).mkdir(parents=True, exist_ok=True)
    for folder in ("output", "temp", "user"):
        (tmp / folder).mkdir(exist_ok=True)
    lines = [f"nvfp4_tests:\n  base_path: {tmp}\n  custom_nodes: custom_nodes\n"]
    lines += [f"  {folder}: models/{folder}\n" for folder in MODEL_FOLDERS]
    home.config.write_text("".join(lines))
    return home
