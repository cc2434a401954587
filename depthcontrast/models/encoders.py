"""Backbones and encoders built from a run's backbone specs (depthcontrast.specs), by architecture name.

Plain tables, one constructor per architecture:
- BACKBONES: the point backbone alone (what evaluation trains on and exports are checked against);
- ENCODERS: point backbone + global max-pool + projection head, what DepthContrast pretrains;
- VOXEL_ENCODERS: the voxel encoders (the sparse UNet, MinkUNet34); their modules import their sparse-conv
  stack (spconv) only when one is built.
A head left null in the config is the schema's derived default, [backbone width, hidden, embedding_dim]
(specs.derived_head_dims).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from depthcontrast.architectures import MINKOWSKI
from depthcontrast.errors import ConfigError
from depthcontrast.models.heads import PointNetEncoder, PointNetMSGEncoder
from depthcontrast.models.pointnet2 import PointNet2SSG, fp_width
from depthcontrast.models.pointnet2_msg import PointNet2MSG
from depthcontrast.specs import MSGBackbone, PointBackbone, SSGBackbone, VoxelBackbone, derived_head_dims

SPCONV_UNET, MINKUNET = "spconv_unet", "minkunet"
# the voxel encoders' pooled widths, their heads' input: UNetV2's decoder outputs 64 + 32 + 16 + 16; block8
VOXEL_HEAD_IN = {SPCONV_UNET: 128, MINKUNET: 256}


def msg_settings(spec: MSGBackbone) -> dict[str, Any]:
    """PointNet2MSG keyword arguments of a PointNet-MSG spec."""
    return {
        "npoints": spec.npoints,
        "radius": spec.radius,
        "nsample": spec.nsample,
        "mlps": spec.mlps,
        "fp_mlps": spec.fp_mlps,
        "feature_channels": spec.features.channels,
    }


def _ssg(spec: SSGBackbone) -> PointNet2SSG:
    return PointNet2SSG(scale=spec.scale, npoints=spec.npoints)


def _msg(spec: MSGBackbone) -> PointNet2MSG:
    return PointNet2MSG(**msg_settings(spec))


def _ssg_encoder(spec: SSGBackbone, head: Sequence[int]) -> PointNetEncoder:
    return PointNetEncoder(scale=spec.scale, mlp_dims=head, npoints=spec.npoints)


def _msg_encoder(spec: MSGBackbone, head: Sequence[int]) -> PointNetMSGEncoder:
    return PointNetMSGEncoder(mlp_dims=head, **msg_settings(spec))


BACKBONES: dict[str, Callable[[Any], nn.Module]] = {SSGBackbone.name: _ssg, MSGBackbone.name: _msg}
ENCODERS: dict[str, Callable[[Any, Sequence[int]], nn.Module]] = {
    SSGBackbone.name: _ssg_encoder,
    MSGBackbone.name: _msg_encoder,
}


def backbone_width(spec: PointBackbone) -> int:
    """Channels of the backbone's per-point output (fp2)."""
    return spec.fp_mlps[0][-1] if isinstance(spec, MSGBackbone) else fp_width(spec.scale)


def _checked_head(head: Sequence[int], block: str, embedding_dim: int) -> list[int]:
    if head[-1] != embedding_dim:
        raise ConfigError(f"{block}.head_dims ends with {head[-1]}, but loss.embedding_dim is {embedding_dim}")
    return list(head)


def head_dims(spec: PointBackbone, embedding_dim: int) -> list[int]:
    """The configured projection head, or the derived one for the architecture; ends at embedding_dim."""
    head = spec.head_dims or derived_head_dims(spec.definition, backbone_width(spec), embedding_dim)
    return _checked_head(head, "backbone", embedding_dim)


def build_backbone(spec: PointBackbone) -> nn.Module:
    """The point backbone a spec describes, freshly initialised."""
    return BACKBONES[spec.name](spec)


def build_point_encoder(spec: PointBackbone, embedding_dim: int) -> nn.Module:
    """Backbone + max-pool + projection head to `embedding_dim`, freshly initialised."""
    return ENCODERS[spec.name](spec, head_dims(spec, embedding_dim))


def _spconv_unet_encoder(spec: VoxelBackbone, head: Sequence[int]) -> nn.Module:
    from depthcontrast.models.spconv_unet import UNetV2Encoder  # imports spconv

    channels = 3 + spec.features.channels  # MeanVFE: mean x, y, z + point features
    return UNetV2Encoder(channels, spec.grid.sparse_shape, head)


def _minkunet_encoder(spec: VoxelBackbone, head: Sequence[int]) -> nn.Module:
    channels = spec.features.channels or 1  # RGB, or a constant 1 without features
    if spec.stack == MINKOWSKI:
        from depthcontrast.models.minkunet_me import MinkUNet34MEEncoder  # builds: a one-line error without it

        return MinkUNet34MEEncoder(channels, head)
    from depthcontrast.models.minkunet import MinkUNet34Encoder  # imports spconv

    return MinkUNet34Encoder(channels, spec.grid.grid_size[::-1].tolist(), head)


VOXEL_ENCODERS: dict[str, Callable[[VoxelBackbone, Sequence[int]], nn.Module]] = {
    SPCONV_UNET: _spconv_unet_encoder,
    MINKUNET: _minkunet_encoder,
}


def voxel_head_dims(spec: VoxelBackbone, embedding_dim: int) -> list[int]:
    """The voxel encoder's projection head: configured, or the derived [pooled width, hidden, embedding_dim]."""
    head = spec.head_dims or derived_head_dims(spec.definition, VOXEL_HEAD_IN[spec.name], embedding_dim)
    return _checked_head(head, "voxel_backbone", embedding_dim)


def build_voxel_encoder(spec: VoxelBackbone, embedding_dim: int) -> nn.Module:
    """A run's voxel encoder: sparse backbone + pooling + head, freshly initialised."""
    return VOXEL_ENCODERS[spec.name](spec, voxel_head_dims(spec, embedding_dim))
