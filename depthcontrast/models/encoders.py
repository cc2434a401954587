"""Point backbones and encoders built from a run's validated `backbone` config block, by `name`.

Two plain tables, one constructor per architecture:
- BACKBONES: the backbone alone (what evaluation trains on and exports are checked against);
- ENCODERS: backbone + global max-pool + projection head, what DepthContrast pretrains.
The head defaults to [backbone width, hidden, embedding_dim]: hidden 512 for PointNet++ SSG (the seed's
indoor head) and 128 for PointNet-MSG (the seed's LiDAR head).

Voxel encoders come from a run's `voxel_backbone` block through VOXEL_ENCODERS (the sparse UNet, MinkUNet34);
their modules import their sparse-conv stack (spconv) only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from depthcontrast.data.point_features import InputFeatures
from depthcontrast.errors import ConfigError
from depthcontrast.models.heads import PointNetEncoder, PointNetMSGEncoder
from depthcontrast.models.pointnet2 import PointNet2SSG, fp_width
from depthcontrast.models.pointnet2_msg import PointNet2MSG

SSG, MSG = "pointnet2_ssg", "pointnet2_msg"
HEAD_HIDDEN = {SSG: 512, MSG: 128}

BackboneConfig = Mapping[str, Any]


def backbone_name(backbone: BackboneConfig) -> str:
    """The architecture a backbone block names (blocks written before `name` existed are SSG)."""
    name = backbone.get("name", SSG)
    if name not in BACKBONES:
        raise ConfigError(f"unknown point backbone {name!r} (known: {', '.join(BACKBONES)})")
    return name


def msg_settings(backbone: BackboneConfig) -> dict[str, Any]:
    """PointNet2MSG keyword arguments from a `pointnet2_msg` block."""
    return {
        "npoints": backbone["npoints"],
        "radius": backbone["radius"],
        "nsample": backbone["nsample"],
        "mlps": backbone["mlps"],
        "fp_mlps": backbone["fp_mlps"],
        "feature_channels": InputFeatures.of_backbone(backbone).channels,
    }


def _ssg(backbone: BackboneConfig) -> PointNet2SSG:
    return PointNet2SSG(scale=backbone["scale"], npoints=backbone["npoints"])


def _msg(backbone: BackboneConfig) -> PointNet2MSG:
    return PointNet2MSG(**msg_settings(backbone))


def _ssg_encoder(backbone: BackboneConfig, head: Sequence[int]) -> PointNetEncoder:
    return PointNetEncoder(scale=backbone["scale"], mlp_dims=head, npoints=backbone["npoints"])


def _msg_encoder(backbone: BackboneConfig, head: Sequence[int]) -> PointNetMSGEncoder:
    return PointNetMSGEncoder(mlp_dims=head, **msg_settings(backbone))


BACKBONES: dict[str, Callable[[BackboneConfig], nn.Module]] = {SSG: _ssg, MSG: _msg}
ENCODERS: dict[str, Callable[[BackboneConfig, Sequence[int]], nn.Module]] = {SSG: _ssg_encoder, MSG: _msg_encoder}


def backbone_width(backbone: BackboneConfig) -> int:
    """Channels of the backbone's per-point output (fp2)."""
    if backbone_name(backbone) == MSG:
        return backbone["fp_mlps"][0][-1]
    return fp_width(backbone["scale"])


def head_dims(backbone: BackboneConfig, embedding_dim: int) -> list[int]:
    """The configured projection head, or the default one for the architecture; ends at embedding_dim."""
    name = backbone_name(backbone)
    head = backbone.get("head_dims") or [backbone_width(backbone), HEAD_HIDDEN[name], embedding_dim]
    if head[-1] != embedding_dim:
        raise ConfigError(f"backbone.head_dims ends with {head[-1]}, but loss.embedding_dim is {embedding_dim}")
    return list(head)


def build_backbone(backbone: BackboneConfig) -> nn.Module:
    """The backbone a block describes, freshly initialised."""
    return BACKBONES[backbone_name(backbone)](backbone)


def _spconv_unet_encoder(block: BackboneConfig, head: Sequence[int]) -> nn.Module:
    from depthcontrast.data.voxelize import VoxelGrid
    from depthcontrast.models.spconv_unet import UNetV2Encoder  # imports spconv

    channels = 3 + InputFeatures.of_backbone(block).channels  # MeanVFE: mean x, y, z + point features
    return UNetV2Encoder(channels, VoxelGrid.of_backbone(block).sparse_shape, head)


def _minkunet_encoder(block: BackboneConfig, head: Sequence[int]) -> nn.Module:
    from depthcontrast.data.voxelize import VoxelGrid
    from depthcontrast.models.minkunet import MinkUNet34Encoder  # imports spconv

    channels = InputFeatures.of_backbone(block).channels or 1  # RGB, or a constant 1 without features
    return MinkUNet34Encoder(channels, VoxelGrid.of_backbone(block).grid_size[::-1].tolist(), head)


SPCONV_UNET, MINKUNET = "spconv_unet", "minkunet"
VOXEL_HEAD_IN = {SPCONV_UNET: 128, MINKUNET: 256}  # UNetV2: pooled decoder outputs 64 + 32 + 16 + 16; block8
VOXEL_HEAD_HIDDEN = {SPCONV_UNET: 128, MINKUNET: 256}  # the seeds' mlp_dim: [128, 128, 128], [256, 256, 128]
VOXEL_ENCODERS: dict[str, Callable[[BackboneConfig, Sequence[int]], nn.Module]] = {
    SPCONV_UNET: _spconv_unet_encoder,
    MINKUNET: _minkunet_encoder,
}


def voxel_head_dims(block: BackboneConfig, embedding_dim: int) -> list[int]:
    """The voxel encoder's projection head: configured, or [pooled width, hidden, embedding_dim] (the seed's)."""
    name = block["name"]
    head = block.get("head_dims") or [VOXEL_HEAD_IN[name], VOXEL_HEAD_HIDDEN[name], embedding_dim]
    if head[-1] != embedding_dim:
        raise ConfigError(f"voxel_backbone.head_dims ends with {head[-1]}, but loss.embedding_dim is {embedding_dim}")
    return list(head)


def build_voxel_encoder(block: BackboneConfig, embedding_dim: int) -> nn.Module:
    """A run's voxel encoder (`voxel_backbone` block): sparse backbone + pooling + head, freshly initialised."""
    if block.get("name") not in VOXEL_ENCODERS:
        raise ConfigError(f"unknown voxel backbone {block.get('name')!r} (known: {', '.join(VOXEL_ENCODERS)})")
    return VOXEL_ENCODERS[block["name"]](block, voxel_head_dims(block, embedding_dim))


def build_point_encoder(backbone: BackboneConfig, embedding_dim: int) -> nn.Module:
    """Backbone + max-pool + projection head to `embedding_dim`, freshly initialised."""
    return ENCODERS[backbone_name(backbone)](backbone, head_dims(backbone, embedding_dim))
