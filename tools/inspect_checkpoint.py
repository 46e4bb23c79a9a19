"""Print what a FLUX.1 checkpoint is: producer, layout, nibble order, which layers are NVFP4 / bf16.

python tools/inspect_checkpoint.py path/to/model.safetensors      (or a diffusers folder)
python tools/inspect_checkpoint.py --json path ...                  (machine-readable)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels.formats import CheckpointError, load_flux_state_dict  # noqa: E402


def summarize(path: str) -> dict:
    state = load_flux_state_dict(path)
    t = state.tensors
    fp4_bytes = sum(v.numel() * v.element_size() for v in t.values() if v.dtype in (torch.uint8, torch.float8_e4m3fn))
    return {
        "path": str(path),
        "producer": state.layout.producer,
        "names": state.layout.naming,
        "variant": f"FLUX.1-{state.variant}",
        "nibble_order_in_file": {"lo": "even element in low nibble (ModelOpt)",
                                 "hi": "even element in high nibble (comfy-kitchen)"}[state.layout.nibble_order],
        "scale_layout_in_file": state.layout.scale_layout,
        "evidence": state.layout.evidence,
        "file_bytes": state.source.size_bytes(),
        "nvfp4_bytes": fp4_bytes,
        "nvfp4_layers": state.fp4_layers,
        "bf16_layers": state.dense_layers,
        "mixed_layers": state.mixed_layers,
    }  # fmt: skip


def _group(layers: list[str]) -> str:
    """``double_blocks.3.img_attn.qkv`` x19 -> ``double_blocks.*.img_attn.qkv (19)``."""
    import re
    from collections import Counter

    counts = Counter(re.sub(r"\.\d+\.", ".*.", name) for name in layers)
    return ", ".join(f"{name} ({n})" if n > 1 else name for name, n in sorted(counts.items())) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    status = 0
    for path in args.paths:
        try:
            info = summarize(path)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(info, indent=1))
            continue
        print(f"{info['path']}")
        print(f"  producer      {info['producer']} ({', '.join(info['evidence'])})")
        print(f"  model         {info['variant']}, {info['names']} key names")
        print(f"  nibble order  {info['nibble_order_in_file']}; scales {info['scale_layout_in_file']}")
        print(f"  size          {info['file_bytes'] / 1e9:.2f} GB on disk, {info['nvfp4_bytes'] / 1e9:.2f} GB NVFP4")
        print(f"  NVFP4 ({len(info['nvfp4_layers'])})  {_group(info['nvfp4_layers'])}")
        print(f"  bf16 ({len(info['bf16_layers'])})   {_group(info['bf16_layers'])}")
        if info["mixed_layers"]:
            print(f"  mixed ({len(info['mixed_layers'])})  {_group(info['mixed_layers'])}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
