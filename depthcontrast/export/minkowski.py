"""MinkUNet34 weights between spconv's layout and MinkowskiEngine's (0.5.4, and the 0.4 era of the released
checkpoints), and a stand-in with STS's Res16UNet34 names and shapes.

MinkowskiEngine facts this module rests on (read in NVIDIA/MinkowskiEngine and chrischoy/SpatioTemporalSegmentation,
and measured against a real MinkowskiEngine 0.5.4 in tests/test_minkowski.py):
- A convolution's parameter is `kernel`, shape [kernel_volume, in, out]; a kernel of volume 1 with stride 1 is
  [in, out] (MinkowskiConvolutionBase's `kernel_shape`); no bias in Res16UNet.
- out[u] = Σ_i kernel[i]ᵀ·in[u + offset_i], offsets in the coordinate columns' order x, y, z.
- HYPER_CUBE regions: offsets from the lower bound, the FIRST axis fastest, i = ix + K·iy + K²·iz; for an odd K they
  run −K//2 .. K//2, for an even K 0 .. K−1 (src/kernel_region.hpp). A transposed conv pairs the same offsets: the
  fine voxel u + offset_i receives kernel[i]ᵀ·in[u] (measured: spconv's inverse conv, converted, agrees).
- STS's blocks ask for HYBRID regions (ConvType.SPATIAL_HYPERCUBE_TEMPORAL_HYPERCROSS). MinkowskiEngine 0.4 turned
  them into CUSTOM offsets in Python (convert_region_type): start from [(0, 0, 0)]; for each axis in order, append,
  for every offset already listed and every non-centre position along that axis, a copy with that axis moved; for
  3³: (0,0,0), (−1,0,0), (1,0,0), (0,−1,0), (0,1,0), (−1,−1,0), ... So the original's released checkpoints
  (trained on 0.4) hold their block kernels in that order: LAYOUT_04.
- MinkowskiEngine 0.5.4 cannot run HYBRID regions (its get_kernel_volume has no HYBRID case and its kernel map
  asserts "Not implemented yet" for CUSTOM offsets): a Res16UNet34 on 0.5.4 has HYPER_CUBE block convs, the same
  3³ neighbourhood with its planes in cube order: LAYOUT_05, what this package's MinkowskiEngine stack runs and its
  minkunet_seg export writes.

spconv 2.x: weight [out, k0, k1, k2, in] over the index columns (z, y, x) (this package's voxel coordinates);
out[u] = Σ W[:, a, b, c, :]·in[u + (a, b, c) − k//2] for a SubM conv, in[2u + (a, b, c)] for the 2³ stride-2
conv, and the inverse conv scatters back along the same pairs. A 1³ stride-1 conv is the exception: spconv 2.3.8
computes it as features @ weight.view(in, out), its [out, 1, 1, 1, in] memory read as [in, out] (spconv/pytorch/
conv.py, the conv1x1 path without FILTER_HWIO; measured against a direct product), so the MinkowskiEngine kernel of
a downsample conv is that view, not the transposed [out, in] matrix (as this module assumed before it was checked
against a real MinkowskiEngine).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from depthcontrast.models.res16unet34 import CONV1_KERNEL_SIZE, INIT_DIM, LAYERS, PLANES

Offset = tuple[int, int, int]
HYPERCUBE, HYBRID, POINTWISE = "hypercube", "hybrid", "pointwise"
LAYOUT_04, LAYOUT_05 = "0.4", "0.5"  # MinkowskiEngine generations: block kernels in HYBRID / HYPER_CUBE order
KERNEL, WEIGHT = ".kernel", ".weight"  # MinkowskiEngine's and spconv's conv parameter names
BLOCK_CONV = re.compile(r"^block\d\.\d+\.conv[12]\.weight$")
DOWNSAMPLE_CONV = re.compile(r"^block\d\.\d+\.downsample\.0\.weight$")


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


def region_of(key: str, layout: str = LAYOUT_05) -> str:
    """Which MinkowskiEngine region a MinkUNet34 conv (its `.weight` or `.kernel` key) has in `layout`."""
    key = re.sub(r"\.kernel$", ".weight", key)
    if DOWNSAMPLE_CONV.match(key):
        return POINTWISE
    if BLOCK_CONV.match(key) and layout == LAYOUT_04:
        return HYBRID
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
    if region == POINTWISE:  # what spconv computes: features @ weight.view(in, out) (see the module docstring)
        return weight.reshape(weight.shape[-1], weight.shape[0]).clone()
    planes = [weight[(slice(None), *_spconv_index(offset, k))].t() for offset in offsets_for(region, k)]
    return torch.stack(planes).contiguous()


def from_minkowski(kernel: torch.Tensor, region: str, k: int) -> torch.Tensor:
    """The inverse of `to_minkowski`: MinkowskiEngine's kernel back to spconv's [out, k, k, k, in]."""
    if region == POINTWISE:
        return kernel.reshape(kernel.shape[1], 1, 1, 1, kernel.shape[0]).clone()
    out = kernel.new_zeros(kernel.shape[2], k, k, k, kernel.shape[1])
    for plane, offset in zip(kernel, offsets_for(region, k), strict=True):
        out[(slice(None), *_spconv_index(offset, k))] = plane.t()
    return out


def minkowski_state(
    encoder: Mapping[str, torch.Tensor], layout: str = LAYOUT_05
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The spconv MinkUNet34 encoder's backbone (head left out) under MinkowskiEngine's names and `layout`:
    `<conv>.weight` [out, k, k, k, in] → `<conv>.kernel`; norms unchanged. Returns (state, key map)."""
    state, key_map = {}, {}
    for key, tensor in encoder.items():
        if key.startswith("head."):
            continue
        if key.endswith(WEIGHT) and tensor.ndim == 5:
            out_key = key[: -len(WEIGHT)] + KERNEL
            state[out_key] = to_minkowski(tensor, region_of(key, layout))
        else:
            out_key = key
            state[out_key] = tensor
        key_map[key] = out_key
    return state, key_map


def _kernel_size(kernel: torch.Tensor) -> int:
    return 1 if kernel.ndim == 2 else round(kernel.shape[0] ** (1 / 3))


def spconv_state(state: Mapping[str, torch.Tensor], layout: str = LAYOUT_05) -> dict[str, torch.Tensor]:
    """The inverse of `minkowski_state`: MinkowskiEngine names and `layout` → the spconv MinkUNet34's (every other
    key, the head's included, unchanged)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(KERNEL) and not key.startswith("head."):
            region = region_of(key, layout)
            out[key[: -len(KERNEL)] + WEIGHT] = from_minkowski(tensor, region, _kernel_size(tensor))
        else:
            out[key] = tensor
    return out


def relayout(state: Mapping[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    """MinkowskiEngine kernels from one generation's plane order to another's (only block convs differ)."""
    out = dict(state)
    for key, tensor in state.items():
        if key.endswith(KERNEL) and tensor.ndim == 3 and region_of(key, source) != region_of(key, target):
            k = _kernel_size(tensor)
            spconv_weight = from_minkowski(tensor, region_of(key, source), k)
            out[key] = to_minkowski(spconv_weight, region_of(key, target))
    return out


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
