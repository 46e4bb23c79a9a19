"""Real ComfyUI inside this Python process: its CLI flags, memory managers, nodes and executor.

Used by ``tools/bench_e2e.py``. :func:`start_comfyui` does what ComfyUI's ``main.py`` does before
serving (argument parsing, comfy-aimdo dynamic VRAM set-up, built-in and custom nodes, model
folders), and :class:`InProcessComfy` runs API-format prompts with ComfyUI's ``PromptExecutor``,
exactly as its queue worker does, without the HTTP server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import sys
import uuid

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]


class _NoServer:
    """The parts of ComfyUI's ``PromptServer`` the executor talks to; messages are dropped."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, *args, **kwargs) -> None:
        return None

    def queue_updated(self) -> None:
        return None


class InProcessComfy:
    """Runs API-format prompts with ComfyUI's own executor (classic cache: unchanged nodes are reused)."""

    def __init__(self) -> None:
        import execution

        self._execution = execution
        self.executor = execution.PromptExecutor(
            _NoServer(), cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
        )

    def run(self, prompt: dict) -> None:
        """Validate and execute ``prompt``; raises with ComfyUI's own messages on failure."""
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(self._execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise RuntimeError(f"ComfyUI rejected the prompt: {valid[1]} {valid[3]}")
        self.executor.execute(prompt, prompt_id, {}, valid[2])
        if not self.executor.success:
            errors = [m[1] for m in self.executor.status_messages if m[0] == "execution_error"]
            raise RuntimeError(f"ComfyUI execution failed: {errors[-1] if errors else self.executor.status_messages}")

    def reset(self) -> None:
        """Drop every cached node output (models included)."""
        self.executor.reset()


def start_comfyui(comfyui: str | os.PathLike, cli_args: list[str], home: pathlib.Path,
                  extra_nodes: dict[str, type] | None = None) -> InProcessComfy:  # fmt: skip
    """Import ComfyUI from ``comfyui`` with ``cli_args`` (as given to its ``main.py``), this pack
    installed as a custom node, model folders under ``home/models/<folder>`` and ``extra_nodes``
    registered; returns a prompt runner."""
    comfyui = str(pathlib.Path(comfyui).resolve())
    home.mkdir(parents=True, exist_ok=True)
    custom_nodes = home / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    for folder in ("output", "temp", "user"):
        (home / folder).mkdir(exist_ok=True)
    link = custom_nodes / "ComfyUI-NVFP4-FLUX"
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    dirs = ["--output-directory", str(home / "output"), "--temp-directory", str(home / "temp"),
            "--user-directory", str(home / "user")]  # fmt: skip
    sys.argv = ["main.py", *dirs, *cli_args]
    sys.path.insert(0, comfyui)
    os.chdir(comfyui)

    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args

    args = comfy.cli_args.args
    # ComfyUI before dynamic VRAM (e.g. v0.8) has neither this switch nor comfy.memory_management
    dynamic = getattr(comfy.cli_args, "enables_dynamic_vram", lambda: False)()
    _init_aimdo_control(args, dynamic)
    import comfy.model_management
    import comfy.model_patcher
    import folder_paths

    import nodes

    if dynamic and comfy.model_management.is_nvidia():
        _enable_dynamic_vram(args, comfy)
    folder_paths.add_model_folder_path("custom_nodes", str(custom_nodes))
    for folder in ("diffusion_models", "loras", "text_encoders", "vae"):
        (home / "models" / folder).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(home / "models" / folder), is_default=True)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    missing = [n for n in ("NVFP4FluxLoader", "NVFP4Warmup", "TorchCompileModel") if n not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"ComfyUI at {comfyui} did not load nodes {missing} (see the log above)")
    for name, cls in (extra_nodes or {}).items():
        nodes.NODE_CLASS_MAPPINGS[name] = cls
    return InProcessComfy()


def _init_aimdo_control(args, dynamic: bool) -> None:
    """main.py's comfy-aimdo start (before CUDA is touched), for the protocol versions ComfyUI knows."""
    if not dynamic:
        return
    import comfy_aimdo.control

    headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024**3)
    for kwargs in ({"simple_vram_headroom": headroom, "nvml_pressure": not args.disable_nvml_pressure},
                   {"simple_vram_headroom": headroom}, {}):  # fmt: skip
        try:
            comfy_aimdo.control.init(**kwargs)
            return
        except TypeError:
            continue


def _enable_dynamic_vram(args, comfy) -> None:
    """main.py's switch to ``ModelPatcherDynamic`` when comfy-aimdo finds the GPUs."""
    import comfy.memory_management
    import comfy_aimdo.control

    devices = comfy.model_management.get_all_torch_devices()
    try:
        ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024**3)) for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if ok:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
        logging.info("DynamicVRAM support detected and enabled")
    else:
        logging.warning("comfy-aimdo found no device: dynamic VRAM off")
