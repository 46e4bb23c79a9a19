"""Test-only ComfyUI node: random FLUX conditioning, so tests need no text encoder."""

import torch


class NVFP4TestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "tokens": ("INT", {"default": 8}),
                             "context_dim": ("INT", {"default": 64}), "pooled_dim": ("INT", {"default": 32}),
                             "guidance": ("FLOAT", {"default": 3.5})}}  # fmt: skip

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens, context_dim, pooled_dim, guidance):
        g = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, tokens, context_dim, generator=g)
        pooled = torch.randn(1, pooled_dim, generator=g)
        return ([[cond, {"pooled_output": pooled, "guidance": guidance}]],)


NODE_CLASS_MAPPINGS = {"NVFP4TestConditioning": NVFP4TestConditioning}
