"""Projection head and the point encoder DepthContrast trains: backbone, global max-pool, head."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from depthcontrast.errors import ConfigError
from depthcontrast.models.pointnet2 import SA_NPOINTS, PointNet2SSG, first_level_centres
from depthcontrast.models.pointnet2_msg import PointNet2MSG

# the original's heads, the schema's derived head_dims at the default widths (tests/test_defaults.py checks them)
ORIGINAL_HEAD_DIMS = (512, 512, 128)  # PointNet++ at 1x
ORIGINAL_MSG_HEAD_DIMS = (128, 128, 128)  # PointNet-MSG (mlp_dim of its LiDAR configs)


class MLPHead(nn.Module):
    """Linear layers of widths `dims` with ReLU between them (none after the last), as `clf`."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        if len(dims) < 2 or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ConfigError(f"an MLP head needs at least two positive integer widths, got {list(dims)}")
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(pairwise(dims)):
            if i:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Linear(cin, cout))
        self.clf = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x)


def head_on(mlp_dims: Sequence[int], width: int, what: str) -> MLPHead:
    """The MLP head on a backbone whose output width is `width` (`what` names it); its first width must match."""
    if mlp_dims[0] != width:
        raise ConfigError(f"the point head's first width must be {what} ({width}), got mlp_dims {list(mlp_dims)}")
    return MLPHead(mlp_dims)


def per_sample_max(features: torch.Tensor, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Max over the rows of each sample (`batch` [M] holds each row's sample): [batch_size, C], 0 for a sample
    without rows (the global max-pool of the voxel encoders)."""
    index = batch.long().unsqueeze(1).expand_as(features)
    out = features.new_zeros(batch_size, features.shape[1])
    return out.scatter_reduce(0, index, features, reduce="amax", include_self=False)


class PointNetEncoder(PointNet2SSG):
    """PointNet++ backbone + max-pool over fp2 points + MLP head: xyz [B, N, 3] -> embedding [B, dims[-1]].

    Its state_dict keys are the original's `module.trunk.0.*` keys without that prefix (`sa1...`, `fp2...`,
    `head.clf.0.weight`). The head's first width must be the backbone's fp2 width.
    """

    def __init__(
        self,
        scale: int = 1,
        mlp_dims: Sequence[int] = ORIGINAL_HEAD_DIMS,
        npoints: Sequence[int] = SA_NPOINTS,
        backend: str = "auto",
    ):
        super().__init__(scale=scale, npoints=npoints, backend=backend)
        self.head = head_on(mlp_dims, self.out_channels, f"the fp2 width of a {scale}x PointNet++")

    def prepare_views(self, query: torch.Tensor, key: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Both views with their sa1 centres, sampled in one launch: (view, inds) each, this forward's arguments."""
        inds = first_level_centres(self.sa1, query, key)
        return (query, inds[0]), (key, inds[1])

    def forward(self, xyz: torch.Tensor, first_inds: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        fp2 = super().forward(xyz, first_inds=first_inds)["fp2_features"]
        return self.head(fp2.max(dim=2).values)


class PointNetMSGEncoder(PointNet2MSG):
    """PointNet-MSG backbone + max-pool over its per-point features + MLP head: [B, N, 3 + C] -> [B, dims[-1]].

    Its state_dict keys are the backbone's own (OpenPCDet's `SA_modules.0.mlps.0.0.weight`, ...; the
    original's PointNet2MSG trunk keys) plus the head's `head.clf.*`. The head's first width must be the
    backbone's output width (fp_mlps[0][-1]); `backbone` holds PointNet2MSG's keyword arguments.
    """

    def __init__(self, mlp_dims: Sequence[int] = ORIGINAL_MSG_HEAD_DIMS, **backbone: Any):
        super().__init__(**backbone)
        self.head = head_on(mlp_dims, self.out_channels, "the PointNet-MSG output width")

    def prepare_views(self, query: torch.Tensor, key: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Both views with their first level's centres, sampled in one launch: (view, inds) each."""
        inds = first_level_centres(self.SA_modules[0], query, key)
        return (query, inds[0]), (key, inds[1])

    def forward(self, points: torch.Tensor, first_inds: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        features = super().forward(points, first_inds)["fp2_features"]
        return self.head(features.max(dim=2).values)
