"""Run real ComfyUI (from ``COMFYUI_PATH``) with this pack installed in a temporary folder.

Tests import this helper; they skip (with a reason) when ``COMFYUI_PATH`` is unset.
The pack is linked into ``<tmp>/custom_nodes/ComfyUI-NVFP4-FLUX`` and model folders are
added through an ``--extra-model-paths-config`` YAML, so the ComfyUI checkout is never
written to.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "ComfyUI-NVFP4-FLUX"
TEST_NODES = pathlib.Path(__file__).resolve().parent / "comfy_test_nodes"
MODEL_FOLDERS = ("diffusion_models", "loras", "text_encoders", "vae")


IN_PROCESS_PREAMBLE = """
import sys, pathlib, torch
sys.path.insert(0, {tools!r}); sys.path.insert(0, {root!r})
import bench_e2e
from comfy_inprocess import start_comfyui
work = pathlib.Path({work!r})
bench_e2e.prepare_files(work / "home" / "models", (1, 1), "cpu")
"""


def run_in_process_script(body: str, work: pathlib.Path, comfyui: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh Python after :data:`IN_PROCESS_PREAMBLE` (the benchmark's 1+1-block
    FLUX files written under ``work``, ``start_comfyui`` imported); ``body`` is a ``str.format``
    template that may use ``{comfy}`` (the ComfyUI checkout) and ``{work}``. Fails the test with
    the output's tail if the script fails."""
    fields = {"tools": str(PACK_ROOT / "tools"), "root": str(PACK_ROOT), "work": str(work), "comfy": comfyui}
    code = (IN_PROCESS_PREAMBLE + body).format(**fields)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


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
    test_nodes = tmp / "custom_nodes" / "nvfp4_test_nodes"
    if not test_nodes.exists():
        test_nodes.symlink_to(TEST_NODES, target_is_directory=True)
    for folder in MODEL_FOLDERS:
        home.models(folder).mkdir(parents=True, exist_ok=True)
    for folder in ("output", "temp", "user"):
        (tmp / folder).mkdir(exist_ok=True)
    lines = [f"nvfp4_tests:\n  base_path: {tmp}\n  custom_nodes: custom_nodes\n"]
    lines += [f"  {folder}: models/{folder}\n" for folder in MODEL_FOLDERS]
    home.config.write_text("".join(lines))
    return home


class ComfyServer:
    """ComfyUI running as a server on 127.0.0.1 (a free port), driven over its HTTP API."""

    def __init__(self, home: ComfyHome, *extra_args: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.home = home
        self.log_path = home.root / "comfyui.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", *home.cli_args(), "--listen", "127.0.0.1", "--port", str(self.port),
             *extra_args],
            cwd=home.comfyui, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited at start-up:\n" + self.log()[-4000:])
            try:
                self.get("/object_info/KSampler")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("ComfyUI did not start:\n" + self.log()[-4000:])

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def get(self, route: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{route}", timeout=30) as resp:
            return json.loads(resp.read())

    def run_prompt(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue an API-format prompt and wait for it; returns its history entry (raises on error)."""
        body = json.dumps({"prompt": prompt}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/prompt", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                prompt_id = json.loads(resp.read())["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"prompt rejected: {exc.read().decode()[:4000]}") from exc
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise RuntimeError(f"prompt failed: {json.dumps(status.get('messages'))[:4000]}")
                return entry
            time.sleep(0.3)
        raise TimeoutError("prompt did not finish:\n" + self.log()[-4000:])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
