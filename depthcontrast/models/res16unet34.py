"""SpatioTemporalSegmentation's Res16UNet34 as the original DepthContrast code configures it: what both MinkUNet34
builds share (models/minkunet.py on spconv, models/minkunet_me.py on MinkowskiEngine), without either library."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from depthcontrast.errors import ConfigError
from depthcontrast.models.heads import MLPHead

PLANES = (32, 64, 128, 256, 256, 256, 256, 256)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32
CONV1_KERNEL_SIZE = 3
BN_MOMENTUM = 0.02  # Res16UNetBase's non-block norms and _make_layer's downsample norms
BLOCK_BN_MOMENTUM = 0.1  # BasicBlockBase's default
BN_EPS = 1e-5  # MinkowskiBatchNorm's default
EMBEDDING_CHANNELS = PLANES[7]
ORIGINAL_HEAD_DIMS = (256, 256, 128)
DOWNSAMPLINGS = 4
XYZ_COLUMNS = 3  # the voxel features start with the mean x, y, z (data/voxelize.py), which MinkUNet does not read


def projection_head(head_dims: Sequence[int]) -> MLPHead:
    """The projection MLP after the global max-pool of block8; its first width must be block8's."""
    if head_dims[0] != EMBEDDING_CHANNELS:
        width = f"{EMBEDDING_CHANNELS} (block8)"
        raise ConfigError(f"the MinkUNet head's first width must be {width}, got {list(head_dims)}")
    return MLPHead(head_dims)


def network_input(voxels: Mapping[str, Any], in_channels: int) -> torch.Tensor:
    """What the network reads of a `collate_voxels` batch: the features after the mean x, y, z (RGB), or a
    constant 1 per voxel when the block reads none."""
    features = voxels["features"][:, XYZ_COLUMNS:]
    if features.shape[1] == 0:
        return voxels["features"].new_ones(len(features), in_channels)
    return features.contiguous()
