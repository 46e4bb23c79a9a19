"""Reading NVFP4 FLUX.1 checkpoints (ModelOpt, sglang, ComfyUI-native, plain bf16) into one
BFL-named state dict. No ComfyUI imports: the tools use this too."""

from .errors import CheckpointError
from .flux_state_dict import FluxStateDict, load_flux_state_dict
from .source import CheckpointSource, open_checkpoint

__all__ = ["CheckpointError", "CheckpointSource", "FluxStateDict", "load_flux_state_dict", "open_checkpoint"]
