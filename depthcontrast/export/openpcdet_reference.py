"""Stand-ins with OpenPCDet's parameter names and shapes, to check an `openpcdet` export against.

Written from OpenPCDet's construction rules, independently of depthcontrast.models (so a mistake in
our backbone cannot hide in its own check). Sources, open-mmlab/OpenPCDet:
- pcdet/models/backbones_3d/pointnet2_backbone.py, `PointNet2MSG.__init__`: SA input channels start
  at input_channels − 3; each scale's MLP spec is [channels in] + MLPS[k][j]; a level's output is the
  sum of its scales' last widths; the skip-channel list is [input_channels − 3, level outputs...];
  FP module k's spec is [(FP_MLPS[k+1][-1], or the deepest SA output for the last) + skip[k]] + FP_MLPS[k].
- pcdet/ops/pointnet2/pointnet2_batch/pointnet2_modules.py: `PointnetSAModuleMSG` adds 3 to each
  spec's first width (use_xyz) and keeps `mlps` (an nn.ModuleList of nn.Sequential) and parameterless
  `groupers`; each MLP layer is Conv2d(1x1, bias=False), BatchNorm2d, ReLU, so the Sequential indices
  are 3i, 3i+1, 3i+2; `PointnetFPModule` keeps one such nn.Sequential as `mlp`.
- pcdet/models/detectors/detector3d_template.py: the detector registers the 3D backbone under
  `backbone_3d` (module_topology), so its keys are `backbone_3d.SA_modules.0.mlps.0.0.weight`, ...
- pcdet/models/backbones_3d/spconv_unet.py `UNetV2.__init__` and spconv_backbone.py `post_act_block`:
  conv_input = Sequential(SubM conv C→16, BN, ReLU); conv1 = Sequential(block 16→16); conv2..conv4 =
  Sequential(strided block, block, block) with widths 16→32, 32→64, 64→64; decoder per level k:
  conv_up_t{k} = SparseBasicBlock (conv1, bn1, relu, conv2, bn2), conv_up_m{k} = block(2w → w),
  inv_conv{k} = block (4: 64→64, 3: 64→32, 2: 32→16); conv_up_t1/conv_up_m1 at 16; conv5 =
  Sequential(block 16→16); `conv_out` only with RETURN_ENCODED_TENSOR (Part-A2-free: False). A block
  is Sequential(conv, BatchNorm1d, ReLU); every conv is 3x3x3 without bias. Conv weights: spconv 2.x
  [out, 3, 3, 3, in] (upstream OpenPCDet today), spconv 1.x [3, 3, 3, in, out] (the DepthContrast fork).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

OPENPCDET_XYZ_CHANNELS = 3


def _layers(spec: Sequence[int]) -> nn.Sequential:
    stack: list[nn.Module] = []
    for k in range(len(spec) - 1):
        stack.append(nn.Conv2d(spec[k], spec[k + 1], kernel_size=1, bias=False))
        stack.append(nn.BatchNorm2d(spec[k + 1]))
        stack.append(nn.ReLU())
    return nn.Sequential(*stack)


class _SAModule(nn.Module):
    def __init__(self, specs: Sequence[Sequence[int]]):
        super().__init__()
        self.groupers = nn.ModuleList(nn.Identity() for _ in specs)  # QueryAndGroup: no parameters
        self.mlps = nn.ModuleList(_layers([spec[0] + OPENPCDET_XYZ_CHANNELS, *spec[1:]]) for spec in specs)


class _FPModule(nn.Module):
    def __init__(self, spec: Sequence[int]):
        super().__init__()
        self.mlp = _layers(spec)


class OpenPCDetPointNet2MSG(nn.Module):
    """Parameters of OpenPCDet's PointNet2MSG for a BACKBONE_3D config (SA_CONFIG.MLPS, FP_MLPS)."""

    def __init__(self, mlps: Sequence[Sequence[Sequence[int]]], fp_mlps: Sequence[Sequence[int]], input_channels: int):
        super().__init__()
        channel_in = input_channels - OPENPCDET_XYZ_CHANNELS
        skip_channels = [channel_in]
        self.SA_modules = nn.ModuleList()
        for level in mlps:
            self.SA_modules.append(_SAModule([[channel_in, *spec] for spec in level]))
            channel_in = sum(spec[-1] for spec in level)
            skip_channels.append(channel_in)
        self.FP_modules = nn.ModuleList()
        for k, widths in enumerate(fp_mlps):
            below = fp_mlps[k + 1][-1] if k + 1 < len(fp_mlps) else channel_in
            self.FP_modules.append(_FPModule([below + skip_channels[k], *widths]))


class PointRCNNStandIn(nn.Module):
    """A detector whose only loadable part is `backbone_3d`, as OpenPCDet's PointRCNN registers it."""

    def __init__(self, mlps: Sequence[Sequence[Sequence[int]]], fp_mlps: Sequence[Sequence[int]], input_channels: int):
        super().__init__()
        self.backbone_3d = OpenPCDetPointNet2MSG(mlps, fp_mlps, input_channels)


SPCONV2_LAYOUT, SPCONV1_LAYOUT = "spconv2", "spconv1"


class _SparseConv(nn.Module):
    """A 3x3x3 sparse conv's only parameter, `weight`, in spconv 2.x or 1.x layout."""

    def __init__(self, cin: int, cout: int, layout: str):
        super().__init__()
        shape = (cout, 3, 3, 3, cin) if layout == SPCONV2_LAYOUT else (3, 3, 3, cin, cout)
        self.weight = nn.Parameter(torch.zeros(shape))


def _post_act_block(cin: int, cout: int, layout: str) -> nn.Sequential:
    return nn.Sequential(_SparseConv(cin, cout, layout), nn.BatchNorm1d(cout), nn.ReLU())


class _SparseBasicBlock(nn.Module):
    def __init__(self, channels: int, layout: str):
        super().__init__()
        self.conv1 = _SparseConv(channels, channels, layout)
        self.bn1 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.conv2 = _SparseConv(channels, channels, layout)
        self.bn2 = nn.BatchNorm1d(channels)


class OpenPCDetUNetV2(nn.Module):
    """Parameters of OpenPCDet's UNetV2 (RETURN_ENCODED_TENSOR: False) for `input_channels` voxel features."""

    def __init__(self, input_channels: int, layout: str = SPCONV2_LAYOUT):
        super().__init__()
        block = partial(_post_act_block, layout=layout)
        self.conv_input = _post_act_block(input_channels, 16, layout)
        self.conv1 = nn.Sequential(block(16, 16))
        self.conv2 = nn.Sequential(block(16, 32), block(32, 32), block(32, 32))
        self.conv3 = nn.Sequential(block(32, 64), block(64, 64), block(64, 64))
        self.conv4 = nn.Sequential(block(64, 64), block(64, 64), block(64, 64))
        self.conv_up_t4 = _SparseBasicBlock(64, layout)
        self.conv_up_m4 = block(128, 64)
        self.inv_conv4 = block(64, 64)
        self.conv_up_t3 = _SparseBasicBlock(64, layout)
        self.conv_up_m3 = block(128, 64)
        self.inv_conv3 = block(64, 32)
        self.conv_up_t2 = _SparseBasicBlock(32, layout)
        self.conv_up_m2 = block(64, 32)
        self.inv_conv2 = block(32, 16)
        self.conv_up_t1 = _SparseBasicBlock(16, layout)
        self.conv_up_m1 = block(32, 16)
        self.conv5 = nn.Sequential(block(16, 16))


class PartA2StandIn(nn.Module):
    """A detector whose only loadable part is `backbone_3d`, as OpenPCDet's Part-A2-free registers UNetV2."""

    def __init__(self, input_channels: int, layout: str = SPCONV2_LAYOUT):
        super().__init__()
        self.backbone_3d = OpenPCDetUNetV2(input_channels, layout)
