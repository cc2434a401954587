"""MinkUNet34 weights from spconv's layout to MinkowskiEngine's, and a stand-in with MinkowskiEngine's names.

MinkowskiEngine facts this module rests on (read in NVIDIA/MinkowskiEngine and
chrischoy/SpatioTemporalSegmentation; no MinkowskiEngine was run):
- A convolution's parameter is `kernel`, shape [kernel_volume, in, out]; a kernel of volume 1 with stride 1 is
  [in, out] (MinkowskiEngine/MinkowskiConvolution.py, MinkowskiConvolutionBase: `kernel_shape`); `bias` only with
  has_bias (STS models/modules/common.py `conv`/`conv_tr`: bias=False throughout Res16UNet). A transposed conv
  (MinkowskiConvolutionTranspose) has the same [kernel_volume, in, out] kernel.
- out[u] = Σ_i kernel[i]ᵀ·in[u + offset_i] (the MinkowskiConvolution docstring), offsets in the coordinate
  columns' order: x, y, z (the original's coordinates are the points' x, y, z columns).
- HYPERCUBE regions (STS ConvType.SPATIAL_HYPERCUBE: conv0p1s1, the strided convs and the transposed convs):
  offsets from the lower bound, the FIRST axis fastest, i = ix + K·iy + K²·iz; for an odd K the offsets run
  −K//2 .. K//2, for an even K 0 .. K−1 (src/kernel_region.hpp `kernel_region::set_bounds` and
  `kernel_region_iterator::operator++`; the same order in 0.4's src/region.cpp `RegionIterator::operator++`,
  non-BATCH_FIRST branch).
- HYBRID regions (ConvType.SPATIAL_HYPERCUBE_TEMPORAL_HYPERCROSS, Res16UNetBase.CONV_TYPE, used by every conv
  inside the BasicBlocks): MinkowskiEngine turns them into CUSTOM offsets in Python
  (MinkowskiEngine/MinkowskiKernelGenerator.py `convert_region_type`, RegionType.HYBRID): start from [(0, 0, 0)];
  for each axis in order, append to the list, for every offset already in it and every non-centre position
  along that axis, a copy with that axis moved. For 3³: (0,0,0), (−1,0,0), (1,0,0), (0,−1,0), (0,1,0),
  (−1,−1,0), ... — the centre first, NOT the hypercube order.
- the downsample convs (kernel 1, stride 1) have a [in, out] kernel.

spconv 2.x: weight [out, k0, k1, k2, in] over the index columns (z, y, x) (this package's voxel coordinates);
out[u] = Σ W[:, a, b, c, :]·in[u + (a, b, c) − k//2] for a SubM conv, in[2u + (a, b, c)] for the 2³ stride-2
conv, and the inverse conv scatters back along the same pairs (tests/test_export.py checks these against a
direct evaluation of MinkowskiEngine's rule above). ASSUMED, not read in MinkowskiEngine's C++: its transposed
conv scatters along the strided conv's (input + offset_i → output) pairs reversed, as its kernel map for a
transposed conv is the strided conv's with input and output swapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

Offset = tuple[int, int, int]
HYPERCUBE, HYBRID, POINTWISE = "hypercube", "hybrid", "pointwise"
BLOCK_CONV = re.compile(r"^block\d\.\d+\.conv[12]\.weight$")
DOWNSAMPLE_CONV = re.compile(r"^block\d\.\d+\.downsample\.0\.weight$")
# Res16UNet34 as STS and the original define it, written here independently of models/minkunet.py
PLANES = (32, 64, 128, 256, 256, 256, 256, 256)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32
CONV1_KERNEL_SIZE = 3


def _axis_offsets(k: int) -> list[int]:
    return list(range(k)) if k % 2 == 0 else list(range(-(k // 2), k // 2 + 1))


def hypercube_offsets(k: int) -> list[Offset]:
    """MinkowskiEngine's HYPERCUBE offsets (x, y, z) in kernel order: x fastest (src/kernel_region.hpp)."""
    axis = _axis_offsets(k)
    return [(dx, dy, dz) for dz in axis for dy in axis for dx in axis]


def hybrid_offsets(k: int) -> list[Offset]:
    """MinkowskiEngine's HYBRID (all axes HYPERCUBE) offsets in kernel order (MinkowskiKernelGenerator.py)."""
    offsets: list[list[int]] = [[0, 0, 0]]
    centre = (k - 1) // 2
    for axis in range(3):
        grown = []
        for offset in offsets:
            for position in range(k):
                if position != centre:
                    moved = list(offset)
                    moved[axis] = position - centre
                    grown.append(moved)
        offsets.extend(grown)
    return [(x, y, z) for x, y, z in offsets]


def region_of(key: str) -> str:
    """Which MinkowskiEngine region a MinkUNet34 conv weight (our key) has."""
    if BLOCK_CONV.match(key):
        return HYBRID
    if DOWNSAMPLE_CONV.match(key):
        return POINTWISE
    return HYPERCUBE


def _spconv_index(offset: Offset, k: int) -> tuple[int, int, int]:
    """spconv's (z, y, x) kernel index of a MinkowskiEngine (x, y, z) offset."""
    shift = 0 if k % 2 == 0 else k // 2
    dx, dy, dz = offset
    return dz + shift, dy + shift, dx + shift


def offsets_for(region: str, k: int) -> list[Offset]:
    return hybrid_offsets(k) if region == HYBRID else hypercube_offsets(k)


def to_minkowski(weight: torch.Tensor, region: str) -> torch.Tensor:
    """spconv [out, k, k, k, in] → MinkowskiEngine [k³, in, out] in `region`'s offset order ([in, out] for 1³)."""
    k = weight.shape[1]
    if region == POINTWISE:
        return weight[:, 0, 0, 0, :].t().contiguous()
    planes = [weight[(slice(None), *_spconv_index(offset, k))].t() for offset in offsets_for(region, k)]
    return torch.stack(planes).contiguous()


def from_minkowski(kernel: torch.Tensor, region: str, k: int) -> torch.Tensor:
    """The inverse of `to_minkowski`: MinkowskiEngine's kernel back to spconv's [out, k, k, k, in]."""
    if region == POINTWISE:
        return kernel.t().reshape(kernel.shape[1], 1, 1, 1, kernel.shape[0]).contiguous()
    out = kernel.new_zeros(kernel.shape[2], k, k, k, kernel.shape[1])
    for plane, offset in zip(kernel, offsets_for(region, k), strict=True):
        out[(slice(None), *_spconv_index(offset, k))] = plane.t()
    return out


def minkowski_state(encoder: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The MinkUNet34 encoder's backbone (head left out) under MinkowskiEngine's names and layout:
    `<conv>.weight` [out, k, k, k, in] → `<conv>.kernel`; norms unchanged. Returns (state, key map)."""
    state, key_map = {}, {}
    for key, tensor in encoder.items():
        if key.startswith("head."):
            continue
        if key.endswith(".weight") and tensor.ndim == 5:
            out_key = key[: -len("weight")] + "kernel"
            state[out_key] = to_minkowski(tensor, region_of(key))
        else:
            out_key = key
            state[out_key] = tensor
        key_map[key] = out_key
    return state, key_map


# ------------------------------------------------------------------ stand-in from STS / MinkowskiEngine names
class _Conv(nn.Module):
    """MinkowskiConvolution(Transpose) without bias: `kernel` [volume, in, out], or [in, out] for 1³ stride 1."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        shape = (cin, cout) if k == 1 else (k**3, cin, cout)
        self.kernel = nn.Parameter(torch.zeros(shape))


class _BatchNorm(nn.Module):
    """MinkowskiBatchNorm: its BatchNorm1d as `bn`."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)


class _BasicBlock(nn.Module):
    """STS models/modules/resnet_block.py BasicBlockBase: conv1, norm1, conv2, norm2, (downsample)."""

    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.conv1 = _Conv(inplanes, planes, 3)
        self.norm1 = _BatchNorm(planes)
        self.conv2 = _Conv(planes, planes, 3)
        self.norm2 = _BatchNorm(planes)
        if inplanes != planes:  # _make_layer: stride 1 here, so only a width change downsamples
            self.downsample = nn.Sequential(_Conv(inplanes, planes, 1), _BatchNorm(planes))


def _layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(_BasicBlock(inplanes if i == 0 else planes, planes) for i in range(blocks)))


class Res16UNet34StandIn(nn.Module):
    """STS models/res16unet.py Res16UNet34 (D=3, conv1_kernel_size 3) without `final`: names and shapes only."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv0p1s1 = _Conv(in_channels, INIT_DIM, CONV1_KERNEL_SIZE)
        self.bn0 = _BatchNorm(INIT_DIM)
        inplanes = INIT_DIM
        for i, (conv, bn) in enumerate(
            (("conv1p1s2", "bn1"), ("conv2p2s2", "bn2"), ("conv3p4s2", "bn3"), ("conv4p8s2", "bn4"))
        ):
            self.add_module(conv, _Conv(inplanes, inplanes, 2))
            self.add_module(bn, _BatchNorm(inplanes))
            self.add_module(f"block{i + 1}", _layer(inplanes, PLANES[i], LAYERS[i]))
            inplanes = PLANES[i]
        skips = (PLANES[2], PLANES[1], PLANES[0], INIT_DIM)  # inplanes = PLANES[k] + skip (BasicBlock expansion 1)
        names = (
            ("convtr4p16s2", "bntr4"),
            ("convtr5p8s2", "bntr5"),
            ("convtr6p4s2", "bntr6"),
            ("convtr7p2s2", "bntr7"),
        )
        for i, ((conv, bn), skip) in enumerate(zip(names, skips, strict=True), start=4):
            self.add_module(conv, _Conv(inplanes, PLANES[i], 2))
            self.add_module(bn, _BatchNorm(PLANES[i]))
            self.add_module(f"block{i + 1}", _layer(PLANES[i] + skip, PLANES[i], LAYERS[i]))
            inplanes = PLANES[i]
