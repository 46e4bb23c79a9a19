"""ComfyUI nodes of the pack (V1 ``NODE_CLASS_MAPPINGS`` API, works on every ComfyUI)."""

from .build import NVFP4BuildCheckpoint
from .loader import NVFP4FluxLoader
from .warmup import NVFP4Warmup

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "NVFP4FluxLoader": NVFP4FluxLoader,
    "NVFP4Warmup": NVFP4Warmup,
    "NVFP4BuildCheckpoint": NVFP4BuildCheckpoint,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "NVFP4FluxLoader": "Load NVFP4 FLUX Model",
    "NVFP4Warmup": "NVFP4 Warmup (before Compile)",
    "NVFP4BuildCheckpoint": "Build NVFP4 FLUX Checkpoint",
}
