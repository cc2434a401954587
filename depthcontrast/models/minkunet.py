"""MinkUNet34 (SpatioTemporalSegmentation's `Res16UNet34`, the original's indoor voxel trunk) on spconv 2.x.

The original trains it on MinkowskiEngine; this package has no MinkowskiEngine, so the same network is built
from spconv layers with MinkowskiEngine's module names (chrischoy/SpatioTemporalSegmentation
models/res16unet.py `Res16UNetBase`, models/resnet.py `_make_layer`, models/modules/resnet_block.py
`BasicBlockBase`, models/modules/common.py `conv`/`conv_tr`/`get_norm`; the original's copy in
facebookresearch/DepthContrast models/trunks/spconv/models/res16unet.py):
- conv0p1s1 (3³, in → 32) + bn0; then four times a 2³ stride-2 conv (`conv1p1s2` ... `conv4p8s2`) + bn +
  a stage of BasicBlocks (`block1` ... `block4`: 2, 3, 4, 6 blocks of 32, 64, 128, 256 channels);
- decoder: a 2³ stride-2 transposed conv (`convtr4p16s2` ... `convtr7p2s2`, 256 channels) + bn, the skip
  features of the same resolution concatenated after it, then `block5` ... `block8` (2 blocks each, 256);
- a BasicBlock is conv1 (3³) / norm1 / ReLU / conv2 (3³) / norm2, plus the input (through `downsample`, a
  1³ conv + norm, where the width changes), then ReLU; no conv has a bias; no `final` layer (the
  original's out_channels 1: the pretraining trunk ends at block8);
- every norm is a MinkowskiBatchNorm: a module whose `bn` is a BatchNorm1d (eps 1e-5); momentum 0.02 for the
  non-block norms and the downsample norms, 0.1 inside the blocks (BasicBlockBase's default: `_make_layer`
  does not pass bn_momentum to the blocks).

So every state-dict key is MinkowskiEngine's with `.kernel` spelled `.weight` (spconv's parameter name), and
conv weights are in spconv 2.x's layout [out, kz, ky, kx, in]; export/minkowski.py converts both. A strided
conv is spconv's SparseConv3d(kernel 2, stride 2) and a transposed conv the SparseInverseConv3d of that
conv (same indice_key): exactly MinkowskiEngine's coordinates (output p covers inputs p + {0, 1}³, p even).

The encoder: global max-pool of block8's output (256 channels, full resolution) and the projection head
(the original's mlp_dim [256, 256, 128]; its SMLP has no ReLU between its two linears, ours has, as every
other head in this package). Input features: the voxel's RGB (rgb/255 − 0.5, as the original's model rescales
it) when the block reads [rgb], else a constant 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from depthcontrast.errors import ConfigError
from depthcontrast.models.res16unet34 import (
    BLOCK_BN_MOMENTUM,
    BN_EPS,
    BN_MOMENTUM,
    CONV1_KERNEL_SIZE,
    DOWNSAMPLINGS,
    INIT_DIM,
    LAYERS,
    ORIGINAL_HEAD_DIMS,
    PLANES,
    network_input,
    projection_head,
)
from depthcontrast.models.spconv_unet import batch_max_pool, spconv  # imports spconv, patches its CPU stream


class MinkowskiNorm(nn.Module):
    """MinkowskiBatchNorm's parameters (`bn.weight`, `bn.bias`, running stats) on a sparse tensor's features."""

    def __init__(self, channels: int, momentum: float):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=BN_EPS, momentum=momentum)

    def forward(self, x: Any) -> Any:
        return x.replace_feature(self.bn(x.features))


def _relu(x: Any) -> Any:
    return x.replace_feature(torch.relu(x.features))


class BasicBlock(nn.Module):
    """SpatioTemporalSegmentation's BasicBlock: conv1/norm1/ReLU/conv2/norm2 + (downsampled) input, ReLU."""

    def __init__(self, inplanes: int, planes: int, key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(inplanes, planes, 3, bias=False, indice_key=key)
        self.norm1 = MinkowskiNorm(planes, BLOCK_BN_MOMENTUM)
        self.conv2 = spconv.SubMConv3d(planes, planes, 3, bias=False, indice_key=key)
        self.norm2 = MinkowskiNorm(planes, BLOCK_BN_MOMENTUM)
        self.downsample = (
            nn.Sequential(spconv.SubMConv3d(inplanes, planes, 1, bias=False), MinkowskiNorm(planes, BN_MOMENTUM))
            if inplanes != planes
            else None
        )

    def forward(self, x: Any) -> Any:
        out = self.norm2(self.conv2(_relu(self.norm1(self.conv1(x)))))
        residual = self.downsample(x) if self.downsample is not None else x
        return out.replace_feature(torch.relu(out.features + residual.features))


def _stage(inplanes: int, planes: int, blocks: int, key: str) -> nn.Sequential:
    """`_make_layer`: the first block takes `inplanes` (downsampling when it differs), the rest `planes`."""
    return nn.Sequential(*(BasicBlock(inplanes if i == 0 else planes, planes, key) for i in range(blocks)))


def min_sparse_extent() -> int:
    """The extent per axis that halves without remainder through the four 2³ stride-2 downsamplings."""
    return 2**DOWNSAMPLINGS


class MinkUNet34(nn.Module):
    """Res16UNet34 on voxels; forward returns block8's output (a SparseConvTensor, 256 channels)."""

    def __init__(self, in_channels: int, sparse_shape: Sequence[int]):
        super().__init__()
        if min(sparse_shape) < 1:
            raise ConfigError(f"MinkUNet34: sparse shape {list(sparse_shape)} has an empty axis")
        # padded to a multiple of 16 so that every voxel has a parent at every level (an odd extent would lose
        # its last plane at a 2³ stride-2 conv); MinkowskiEngine's grid is unbounded, so nothing is lost there
        unit = min_sparse_extent()
        self.sparse_shape = [-(-int(size) // unit) * unit for size in sparse_shape]
        self.in_channels = in_channels
        c = INIT_DIM
        self.conv0p1s1 = spconv.SubMConv3d(in_channels, c, CONV1_KERNEL_SIZE, bias=False, indice_key="subm1")
        self.bn0 = MinkowskiNorm(c, BN_MOMENTUM)
        encoder = (("conv1p1s2", "bn1", "block1", 2), ("conv2p2s2", "bn2", "block2", 4))
        encoder += (("conv3p4s2", "bn3", "block3", 8), ("conv4p8s2", "bn4", "block4", 16))
        inplanes = c
        for level, (conv, bn, block, stride) in enumerate(encoder):
            self.add_module(
                conv, spconv.SparseConv3d(inplanes, inplanes, 2, stride=2, bias=False, indice_key=f"down{stride}")
            )
            self.add_module(bn, MinkowskiNorm(inplanes, BN_MOMENTUM))
            self.add_module(block, _stage(inplanes, PLANES[level], LAYERS[level], f"subm{stride}"))
            inplanes = PLANES[level]
        # decoder: (transposed conv, its norm, the stage after it, the resolution it returns to, skip width)
        decoder = (("convtr4p16s2", "bntr4", "block5", 8, PLANES[2]), ("convtr5p8s2", "bntr5", "block6", 4, PLANES[1]))
        decoder += (("convtr6p4s2", "bntr6", "block7", 2, PLANES[0]), ("convtr7p2s2", "bntr7", "block8", 1, INIT_DIM))
        for level, (conv, bn, block, stride, skip) in enumerate(decoder, start=4):
            self.add_module(
                conv, spconv.SparseInverseConv3d(inplanes, PLANES[level], 2, bias=False, indice_key=f"down{stride * 2}")
            )
            self.add_module(bn, MinkowskiNorm(PLANES[level], BN_MOMENTUM))
            self.add_module(block, _stage(PLANES[level] + skip, PLANES[level], LAYERS[level], f"subm{stride}"))
            inplanes = PLANES[level]

    def forward(self, voxels: Mapping[str, Any]) -> Any:
        """voxels: features [M, in_channels], coords [M, 4] int (batch, z, y, x), batch_size → block8's output."""
        x = spconv.SparseConvTensor(
            voxels["features"], voxels["coords"].int(), self.sparse_shape, int(voxels["batch_size"])
        )
        out_p1 = _relu(self.bn0(self.conv0p1s1(x)))
        out_b1p2 = self.block1(_relu(self.bn1(self.conv1p1s2(out_p1))))
        out_b2p4 = self.block2(_relu(self.bn2(self.conv2p2s2(out_b1p2))))
        out_b3p8 = self.block3(_relu(self.bn3(self.conv3p4s2(out_b2p4))))
        out = self.block4(_relu(self.bn4(self.conv4p8s2(out_b3p8))))
        for conv, bn, block, skip in (
            (self.convtr4p16s2, self.bntr4, self.block5, out_b3p8),
            (self.convtr5p8s2, self.bntr5, self.block6, out_b2p4),
            (self.convtr6p4s2, self.bntr6, self.block7, out_b1p2),
            (self.convtr7p2s2, self.bntr7, self.block8, out_p1),
        ):
            up = _relu(bn(conv(out)))  # the inverse conv restores `skip`'s voxels in `skip`'s order
            out = block(up.replace_feature(torch.cat((up.features, skip.features), dim=1)))
        return out


class MinkUNet34Encoder(MinkUNet34):
    """MinkUNet34 + global max-pool of block8 + MLP head: the `collate_voxels` dict → [batch_size, head_dims[-1]].

    The voxel features arrive as (mean x, y, z, then the block's features); the network reads the features
    after x, y, z (RGB), or a constant 1 per voxel when the block reads none.
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], head_dims: Sequence[int] = ORIGINAL_HEAD_DIMS):
        super().__init__(in_channels, sparse_shape)
        self.head = projection_head(head_dims)

    def forward(self, voxels: Mapping[str, Any]) -> torch.Tensor:  # type: ignore[override]
        out = super().forward({**voxels, "features": network_input(voxels, self.in_channels)})
        return self.head(batch_max_pool(out, int(voxels["batch_size"])))
