"""ComfyUI nodes of the pack (V1 ``NODE_CLASS_MAPPINGS`` API, works on every ComfyUI)."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
