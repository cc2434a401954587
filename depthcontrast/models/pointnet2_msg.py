"""PointNet++ multi-scale-grouping backbone: the LiDAR point backbone DepthContrast pretrains for OpenPCDet.

The architecture is OpenPCDet's `PointNet2MSG` backbone_3d as PointRCNN configures it
(tools/cfgs/kitti_models/pointrcnn.yaml), written on our point ops:

- Input: points [B, N, 3 + C], xyz then C per-point features (KITTI and DepthContrast: C = 1,
  intensity; OpenPCDet's `input_channels` = 3 + C).
- Set abstraction level k: farthest-point sampling of `npoints[k]` centres; for each scale j a ball
  query of `nsample[k][j]` neighbours within `radius[k][j]`, their offsets to the centre in metres
  (not divided by the radius) followed by their features, a shared MLP of 1x1 Conv2d (no bias) +
  BatchNorm2d + ReLU per width of `mlps[k][j]`, max-pooled over the neighbours; the scales'
  outputs are concatenated.
- Feature propagation k (one per SA level, run from the deepest up): three-NN inverse-distance
  interpolation of level k+1's features onto level k's points, concatenated with level k's own
  features (the input features at level 0), then a shared MLP of widths `fp_mlps[k]`. The
  last FP module's input is the deepest SA output; every other one's is the next FP's output.

Module names reproduce OpenPCDet's state_dict keys, so `backbone_3d.<key>` loads there as it is:
`SA_modules.{k}.mlps.{j}.{0,1,3,4,...}` (conv at 3i, BatchNorm at 3i+1, ReLU at 3i+2) and
`FP_modules.{k}.mlp.{...}`. The final per-point features (OpenPCDet's `point_features`) are the
`fp2_features` end point, the name DepthContrast gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from depthcontrast.errors import ConfigError
from depthcontrast.models import ops
from depthcontrast.models.pointnet2 import FeaturePropagation, FusedBlock, group_and_pool

# OpenPCDet PointRCNN (tools/cfgs/kitti_models/pointrcnn.yaml, BACKBONE_3D), also DepthContrast's PointNet2MSG
MSG_NPOINTS = (4096, 1024, 256, 64)
MSG_RADIUS = ((0.1, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0))
MSG_NSAMPLE = ((16, 32), (16, 32), (16, 32), (16, 32))
MSG_MLPS = (
    ((16, 16, 32), (32, 32, 64)),
    ((64, 64, 128), (64, 96, 128)),
    ((128, 196, 256), (128, 196, 256)),
    ((256, 256, 512), (256, 384, 512)),
)
MSG_FP_MLPS = ((128, 128), (256, 256), (512, 512), (512, 512))
MSG_FEATURE_CHANNELS = 1  # intensity: KITTI's input_channels 4 = x, y, z, intensity
XYZ_CHANNELS = 3


def shared_mlp(widths: Sequence[int]) -> nn.Sequential:
    """1x1 Conv2d (no bias), BatchNorm2d, ReLU per consecutive pair of `widths`, flat in one Sequential."""
    layers: list[nn.Module] = []
    for cin, cout in pairwise(widths):
        layers += [nn.Conv2d(cin, cout, kernel_size=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class MultiScaleSetAbstraction(FusedBlock):
    """One SA level: `npoint` centres, one ball query + shared MLP + max-pool per scale, concatenated."""

    def __init__(
        self,
        npoint: int,
        radii: Sequence[float],
        nsamples: Sequence[int],
        mlps: Sequence[Sequence[int]],
        in_channels: int,
        backend: str = "auto",
    ):
        super().__init__()
        self.npoint, self.radii, self.nsamples, self.backend = npoint, tuple(radii), tuple(nsamples), backend
        self.mlps = nn.ModuleList(shared_mlp([in_channels + XYZ_CHANNELS, *widths]) for widths in mlps)
        self.out_channels = sum(widths[-1] for widths in mlps)

    def dense(
        self, xyz: torch.Tensor, centres: torch.Tensor, features: torch.Tensor | None, idxs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Each scale's offsets in metres, then the features; its shared MLP and max-pool; concatenated."""
        pooled = [
            group_and_pool(mlp, xyz, centres, features, idx, None) for mlp, idx in zip(self.mlps, idxs, strict=True)
        ]
        return torch.cat(pooled, dim=1)

    def sample(self, xyz: torch.Tensor) -> torch.Tensor:
        """This level's centres in xyz [B, N, 3]: farthest-point-sampling indices [B, npoint]."""
        return ops.farthest_point_sample(xyz, self.npoint, backend=self.backend)

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None, inds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xyz [B, N, 3], features [B, C, N] or None (and the centres' indices, if `sample` ran already) ->
        centres [B, M, 3], features [B, C', M], inds [B, M]."""
        inds = self.sample(xyz) if inds is None else inds
        centres = ops.gather_points(xyz, inds)
        idxs = ops.ball_query_scales(xyz, centres, self.radii, self.nsamples, backend=self.backend)
        return centres, self.run_dense(xyz, centres, features, idxs), inds


def _positive_ints(values: object) -> bool:
    """A non-empty sequence of positive integers."""
    return (
        isinstance(values, Sequence)
        and len(values) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    )


def check_msg_architecture(
    npoints: Sequence[int],
    radius: Sequence[Sequence[float]],
    nsample: Sequence[Sequence[int]],
    mlps: Sequence[Sequence[Sequence[int]]],
    fp_mlps: Sequence[Sequence[int]],
    feature_channels: int,
) -> None:
    """ConfigError unless the settings describe a PointNet-MSG OpenPCDet can build too."""
    levels = len(npoints)
    problems = []
    if not _positive_ints(npoints):
        problems.append(f"npoints must be positive integers, got {list(npoints)}")
    elif any(later > earlier for earlier, later in pairwise(npoints)):
        problems.append(f"npoints must not increase from one level to the next, got {list(npoints)}")
    elif npoints[-1] < ops.NUM_NEIGHBOURS:
        problems.append(f"the deepest level needs at least {ops.NUM_NEIGHBOURS} points to interpolate from")
    sizes = {"radius": len(radius), "nsample": len(nsample), "mlps": len(mlps), "fp_mlps": len(fp_mlps)}
    wrong = {key: size for key, size in sizes.items() if size != levels}
    if wrong:
        problems.append(f"npoints has {levels} levels but {', '.join(f'{k} {v}' for k, v in wrong.items())}")
    else:
        for k in range(levels):
            scales = {len(radius[k]), len(nsample[k]), len(mlps[k])}
            if len(scales) != 1 or not len(mlps[k]):
                problems.append(f"level {k}: radius, nsample and mlps need one entry per scale")
            elif any(r <= 0 for r in radius[k]) or not _positive_ints(nsample[k]):
                problems.append(f"level {k}: radii and nsamples must be positive")
            elif not all(_positive_ints(widths) for widths in mlps[k]):
                problems.append(f"level {k}: every mlps entry needs positive widths")
        problems += [f"fp_mlps[{k}] needs positive widths" for k, w in enumerate(fp_mlps) if not _positive_ints(w)]
    if not isinstance(feature_channels, int) or feature_channels < 0:
        problems.append(f"feature channels must be ≥ 0, got {feature_channels!r}")
    if problems:
        raise ConfigError("PointNet-MSG: " + "; ".join(problems))


class PointNet2MSG(nn.Module):
    """OpenPCDet's PointNet2MSG layout on our point ops; defaults are PointRCNN's KITTI configuration.

    `feature_channels` per-point input features follow xyz in the input (OpenPCDet's
    input_channels − 3); `backend` picks the point-op implementation ("auto", "torch", "triton").
    """

    def __init__(
        self,
        npoints: Sequence[int] = MSG_NPOINTS,
        radius: Sequence[Sequence[float]] = MSG_RADIUS,
        nsample: Sequence[Sequence[int]] = MSG_NSAMPLE,
        mlps: Sequence[Sequence[Sequence[int]]] = MSG_MLPS,
        fp_mlps: Sequence[Sequence[int]] = MSG_FP_MLPS,
        feature_channels: int = MSG_FEATURE_CHANNELS,
        backend: str = "auto",
    ):
        super().__init__()
        check_msg_architecture(npoints, radius, nsample, mlps, fp_mlps, feature_channels)
        self.feature_channels = feature_channels
        self.npoints = tuple(npoints)
        self.SA_modules = nn.ModuleList()
        level_channels = [feature_channels]  # channels of each level's features, input level first
        for npoint, radii, nsamples, widths in zip(npoints, radius, nsample, mlps, strict=True):
            sa = MultiScaleSetAbstraction(npoint, radii, nsamples, widths, level_channels[-1], backend)
            self.SA_modules.append(sa)
            level_channels.append(sa.out_channels)
        self.FP_modules = nn.ModuleList()
        for k, widths in enumerate(fp_mlps):
            from_below = fp_mlps[k + 1][-1] if k + 1 < len(fp_mlps) else level_channels[-1]
            self.FP_modules.append(FeaturePropagation(shared_mlp([from_below + level_channels[k], *widths]), backend))
        self._out_channels = fp_mlps[0][-1]

    @property
    def out_channels(self) -> int:
        """Channels of `fp2_features` (the first FP module's last width)."""
        return self._out_channels

    def forward(self, points: torch.Tensor, first_inds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """points [B, N, 3 + feature_channels] (and the first level's centres, if sampled already) -> end points.

        Keys: sa{k}_{xyz,features,inds} for SA level k = 1.., and the final per-point features under
        DepthContrast's name for them: fp2_features [B, out_channels, N] (FP_modules[0]'s output,
        OpenPCDet's point_features), fp2_xyz = the input xyz, fp2_inds = 0..N-1 (indices into the input).
        """
        if points.dim() != 3 or points.shape[-1] != XYZ_CHANNELS + self.feature_channels:
            raise ValueError(
                f"PointNet-MSG built for {XYZ_CHANNELS} + {self.feature_channels} input channels "
                f"expects points [B, N, {XYZ_CHANNELS + self.feature_channels}], got {list(points.shape)}"
            )
        xyz = points[..., :XYZ_CHANNELS].contiguous()
        features = points[..., XYZ_CHANNELS:].transpose(1, 2).contiguous() if self.feature_channels else None
        level_xyz, level_features = [xyz], [features]
        out: dict[str, torch.Tensor] = {}
        for k, sa in enumerate(self.SA_modules, start=1):
            centres, sa_features, inds = sa(level_xyz[-1], level_features[-1], first_inds if k == 1 else None)
            level_xyz.append(centres)
            level_features.append(sa_features)
            out[f"sa{k}_xyz"], out[f"sa{k}_features"], out[f"sa{k}_inds"] = centres, sa_features, inds
        for k in reversed(range(len(self.FP_modules))):
            level_features[k] = self.FP_modules[k](
                level_xyz[k], level_xyz[k + 1], level_features[k], level_features[k + 1]
            )
        batch, count = xyz.shape[:2]
        out["fp2_features"] = level_features[0]
        out["fp2_xyz"] = xyz
        out["fp2_inds"] = torch.arange(count, device=xyz.device).expand(batch, count)
        return out
