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
"""

from __future__ import annotations

from collections.abc import Sequence

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
