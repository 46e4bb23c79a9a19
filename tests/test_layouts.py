"""Layouts: E2M1 codes, nibble order, swizzled scales; checked against comfy-kitchen."""

from __future__ import annotations

import pytest
import torch

from kernels import (
    e2m1_decode,
    e2m1_encode,
    nvfp4_dequantize,
    pack_nibbles,
    swap_nibbles,
    swizzle_scales,
    swizzled_shape,
    unpack_nibbles,
    unswizzle_scales,
)

ck = pytest.importorskip("comfy_kitchen", reason="comfy-kitchen is ComfyUI's own kernel library (the oracle)")
from comfy_kitchen.float_utils import from_blocked, pack_uint4, to_blocked  # noqa: E402

SCALE_SHAPES = [(128, 4), (1, 1), (3072, 192), (200, 16), (129, 5), (9216, 960), (7, 3)]


def test_e2m1_round_trips_every_code():
    codes = torch.arange(16, dtype=torch.uint8)
    values = e2m1_decode(codes)
    assert values.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]
    recoded = e2m1_encode(values)
    assert torch.equal(recoded[:8], codes[:8])
    assert torch.equal(recoded[9:], codes[9:])  # code 8 (-0.0) encodes to 0 (sign only for x < 0)


def test_e2m1_encode_saturates_at_six(gen):
    x = torch.randn(1000, generator=gen) * 100
    assert e2m1_decode(e2m1_encode(x)).abs().max() <= 6


def test_e2m1_encode_matches_modelopt(gen):
    qt = pytest.importorskip("modelopt.torch.quantization.qtensor").NVFP4QTensor
    x = torch.randn(4096, generator=gen) * 4
    x[:8] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75])
    assert torch.equal(e2m1_encode(x), qt._cast_fp4(x.clone()))


@pytest.mark.parametrize("order", ["lo", "hi"])
def test_pack_unpack_round_trip(order, gen):
    codes = torch.randint(0, 16, (33, 64), generator=gen, dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes, order), order), codes)


def test_lo_order_puts_even_element_in_low_nibble():
    codes = torch.tensor([[0x1, 0x2]], dtype=torch.uint8)
    assert pack_nibbles(codes, "lo").item() == 0x21
    assert pack_nibbles(codes, "hi").item() == 0x12


def test_hi_order_matches_comfy_kitchen_packing(gen):
    codes = torch.randint(0, 16, (16, 32), generator=gen, dtype=torch.uint8)
    assert torch.equal(pack_nibbles(codes, "hi"), pack_uint4(codes, hi_first=True))
    assert torch.equal(pack_nibbles(codes, "lo"), pack_uint4(codes, hi_first=False))


def test_swap_nibbles_twice_is_identity_and_converts_order(gen):
    packed = torch.randint(0, 256, (40, 24), generator=gen, dtype=torch.uint8)
    assert torch.equal(swap_nibbles(swap_nibbles(packed)), packed)
    assert torch.equal(unpack_nibbles(swap_nibbles(packed), "hi"), unpack_nibbles(packed, "lo"))


@pytest.mark.parametrize("shape", SCALE_SHAPES, ids=str)
def test_swizzle_round_trip_and_padding(shape, gen):
    scales = (torch.rand(shape, generator=gen) * 400 + 0.01).to(torch.float8_e4m3fn)
    swizzled = swizzle_scales(scales)
    assert swizzled.shape == swizzled_shape(*shape)
    assert swizzled.shape[0] % 128 == 0 and swizzled.shape[1] % 4 == 0
    assert torch.equal(unswizzle_scales(swizzled, *shape).view(torch.uint8), scales.view(torch.uint8))
    # padding is zeros: the swizzled bytes hold exactly the input's values plus zeros
    pad = swizzled.numel() - scales.numel()
    assert (swizzled.view(torch.uint8) == 0).sum() >= pad


@pytest.mark.parametrize("shape", SCALE_SHAPES, ids=str)
def test_swizzle_matches_comfy_kitchen(shape, gen):
    scales = (torch.rand(shape, generator=gen) * 400 + 0.01).to(torch.float8_e4m3fn)
    ours = swizzle_scales(scales).view(torch.uint8)
    theirs = to_blocked(scales, flatten=False).view(torch.uint8)
    assert torch.equal(ours.flatten(), theirs.flatten())
    back = from_blocked(swizzle_scales(scales), *shape)
    assert torch.equal(back.view(torch.uint8), scales.view(torch.uint8))


@pytest.mark.parametrize("shape", [(64, 128), (200, 256), (3, 48)], ids=str)
def test_comfy_native_layout_decodes_like_comfy_kitchen(shape, gen):
    """ComfyUI-native NVFP4 = high-nibble-first codes + swizzled scales; after nibble swap and
    unswizzle our dequantizer gives comfy-kitchen's own dequantize_nvfp4 values exactly."""
    x = torch.randn(shape, generator=gen)
    per_tensor = (x.abs().max() / 2688).float()
    qx, blocked = ck.quantize_nvfp4(x, per_tensor)
    theirs = ck.dequantize_nvfp4(qx, per_tensor, blocked, torch.float32)
    scales = unswizzle_scales(blocked, shape[0], shape[1] // 16)
    ours_hi = nvfp4_dequantize(qx, scales, per_tensor, dtype=torch.float32, nibble_order="hi")
    ours_lo = nvfp4_dequantize(swap_nibbles(qx), scales, per_tensor, dtype=torch.float32, nibble_order="lo")
    assert torch.equal(ours_hi, theirs)
    assert torch.equal(ours_lo, theirs)
