"""ComfyUI nodes of the pack (V1 ``NODE_CLASS_MAPPINGS`` API, works on every ComfyUI)."""

from .loader import NVFP4FluxLoader

NODE_CLASS_MAPPINGS: dict[str, type] = {"NVFP4FluxLoader": NVFP4FluxLoader}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"NVFP4FluxLoader": "Load NVFP4 FLUX Model"}
