"""Make ``torch.compile``'s on-disk caches see the pack's kernel code.

AOTAutograd's cache and Inductor's FX-graph cache key a compiled graph by the graph Dynamo
produced, where an FP4 linear is one opaque node (``nvfp4_flux::fp4_linear_traced``, any
``OpOverload`` counts as cacheable). What Inductor traced *into* the compiled code (the backend's
Python, its Triton kernels, the tuned configs shipped in ``kernels/tuned/``) is not part of that
key, so after an update of the pack a warm cache would go on running the old kernels (seen on the
H100 in session 7: a changed backend gave a 4 s "compile" that ran the previous code).

:func:`tag_compile_caches` appends a fingerprint of this package's sources and shipped configs to
``torch.compiler.config.cache_key_tag``, which every ``torch.compile`` cache mixes into its keys,
keeping whatever tag the user set (``TORCH_COMPILE_CACHE_KEY_TAG``). Configs a user's warmup tuned
are not in the fingerprint: the warmup runs before the compile, with the same configs each time
for the same shapes.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

import torch

TAG_PREFIX = "nvfp4_flux:"
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


@functools.cache
def source_fingerprint() -> str:
    """16 hex digits of SHA-256 over every ``.py`` and ``.json`` file of this package (path and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".json") and path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tag_compile_caches() -> str:
    """Put this package's fingerprint into ``torch.compiler.config.cache_key_tag`` (replacing an
    older fingerprint of the pack, keeping other tags); returns the new tag. No-op on a torch
    without the setting."""
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "cache_key_tag"):
        return ""
    others = [part for part in config.cache_key_tag.split("+") if part and not part.startswith(TAG_PREFIX)]
    config.cache_key_tag = "+".join([*others, TAG_PREFIX + source_fingerprint()])
    return config.cache_key_tag
