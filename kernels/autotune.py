"""Kernel-config tuning with an on-disk cache (the pack's own small autotuner).

Triton's ``@autotune`` tunes lazily on the first call, which may be inside a sampling step
or under ``torch.compile``. Here tuning happens only when asked (:func:`tuning_enabled`,
used by the warmup node); any other call uses a cached config or a heuristic default and
never benchmarks. Candidates are timed by GPU time from CUDA-graph replays with a cold L2
(:func:`gpu_time_ms`), not by per-call Python timing. Caches are JSON files keyed by GPU name,
torch and Triton versions: ``kernels/tuned/`` ships configs measured here; user caches go
wherever the caller says.

A cache entry maps ``"<kernel>|<key>"`` to a config dict (block sizes, warps, stages).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import threading
from collections.abc import Callable, Iterator

import torch

SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "tuned"

Config = dict[str, int]

_lock = threading.Lock()
_cache: dict[str, Config] = {}
_loaded_files: set[str] = set()
_state = threading.local()
stats = {"tuned": 0, "cache_hits": 0, "defaults": 0}


def device_signature(device: torch.device | None = None) -> str:
    """``<gpu name>__torch-<v>__triton-<v>``, filesystem-safe (the cache file's stem)."""
    import triton

    name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu"
    raw = f"{name}__torch-{torch.__version__.split('+')[0]}__triton-{triton.__version__}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def cache_key(kernel: str, key: tuple) -> str:
    return f"{kernel}|{','.join(str(k) for k in key)}"


def load_cache_file(path: str | os.PathLike) -> int:
    """Merge a JSON cache file into the in-memory cache; returns the number of entries read."""
    path = pathlib.Path(path)
    if not path.is_file():
        return 0
    entries = json.loads(path.read_text())
    with _lock:
        _cache.update({k: dict(v) for k, v in entries.get("configs", {}).items()})
        _loaded_files.add(str(path))
    return len(entries.get("configs", {}))


def load_shipped_configs(device: torch.device | None = None) -> int:
    """Load ``kernels/tuned/<device_signature>.json`` if this GPU/torch/Triton was tuned here."""
    return load_cache_file(SHIPPED_DIR / f"{device_signature(device)}.json")


def save_cache_file(path: str | os.PathLike, device: torch.device | None = None) -> None:
    """Write every cached config to ``path`` (atomically: temp file, then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        payload = {"device": device_signature(device), "configs": dict(sorted(_cache.items()))}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


@contextlib.contextmanager
def tuning_enabled() -> Iterator[None]:
    """Inside this block, configs missing from the cache are benchmarked and cached."""
    previous = getattr(_state, "tuning", False)
    _state.tuning = True
    try:
        yield
    finally:
        _state.tuning = previous


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def pick_config(
    kernel: str,
    key: tuple,
    candidates: list[Config],
    launch: Callable[[Config], None],
) -> Config:
    """The config to launch ``kernel`` with for ``key``.

    ``candidates[0]`` is the heuristic default. ``launch(config)`` runs the kernel once
    (used for benchmarking; it must be safe to repeat, i.e. write only its output). A cached
    config with other keys than every candidate (tuned for an older kernel, e.g. in a user's
    cache file) counts as a miss.
    """
    ck = cache_key(kernel, key)
    with _lock:
        hit = _cache.get(ck)
    # a config whose keys fit no candidate was tuned for an older version of the kernel: ignored
    if hit is not None and any(hit.keys() == c.keys() for c in candidates):
        stats["cache_hits"] += 1
        return hit
    if not getattr(_state, "tuning", False) or interpreting() or len(candidates) == 1:
        stats["defaults"] += 1
        return candidates[0]
    best, best_ms = candidates[0], float("inf")
    for cfg in candidates:
        try:
            ms = gpu_time_ms(lambda cfg=cfg: launch(cfg))
        except Exception:  # a config that does not fit (shared memory, registers) is skipped
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    with _lock:
        _cache[ck] = dict(best)
    stats["tuned"] += 1
    return best


_flush_buffers: dict[torch.device, torch.Tensor] = {}
L2_FLUSH_BYTES = 128 << 20  # larger than any current GPU's L2 (H100 50 MB, B200 126 MB)


def gpu_time_ms(fn: Callable[[], None], calls: int = 8, replays: int = 3) -> float:
    """GPU time of one ``fn()`` with a cold L2, host launch cost excluded.

    ``fn`` runs once (compiling, and tuning what it calls), then ``calls`` copies of
    [L2 flush, ``fn``] are captured in one CUDA graph and ``calls`` flushes in another; the
    difference of their best replay times over ``calls``. A per-call timing from Python (as
    ``triton.testing.do_bench`` does) measures the host instead wherever the host launches more
    slowly than the GPU runs, which made the tuner prefer one slow launch to two fast ones
    on a slow host.
    """
    device = torch.device("cuda", torch.cuda.current_device())
    flush = _flush_buffers.get(device)
    if flush is None:
        flush = _flush_buffers[device] = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    stream = torch.cuda.Stream(device)  # warm up on the capture stream (cuBLAS workspaces, ...)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    stream.synchronize()
    graphs = {"flush": torch.cuda.CUDAGraph(), "both": torch.cuda.CUDAGraph()}
    for name, graph in graphs.items():
        # thread_local: CUDA calls of other threads (ComfyUI's) during the capture are not errors
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            for _ in range(calls):
                flush.zero_()
                if name == "both":
                    fn()
    best = {}
    for name, graph in graphs.items():
        graph.replay()
        best[name] = min(graph_replay_ms(graph, replays))
    return max(best["both"] - best["flush"], 0.0) / calls


def graph_replay_ms(graph: torch.cuda.CUDAGraph, replays: int) -> list[float]:
    """Milliseconds of each of ``replays`` replays of a captured CUDA graph (CUDA events)."""
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times
