"""PointNet++ single-scale-grouping backbone of DepthContrast, widths 1x to 4x.

Four set-abstraction (SA) levels sample centres by farthest-point sampling, group up to `nsample`
neighbours within a radius (offsets to the centre divided by the radius, then the neighbours'
features), run a shared MLP and max-pool over the neighbourhood. Two feature-propagation (FP)
levels interpolate back from sa4 to sa3 and from sa3 to sa2. Module names reproduce the original's
state_dict keys (`sa1.mlp_module.layer0.conv.weight`, `fp2.mlp.layer1.bn.bn.weight`, ...) so its
checkpoints load and ours load into its VoteNet fork.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from depthcontrast.errors import ConfigError
from depthcontrast.models import ops

SA_NPOINTS = (2048, 1024, 512, 256)
SA_RADII = (0.2, 0.4, 0.8, 1.2)
SA_NSAMPLES = (64, 32, 16, 16)
SA_WIDTHS = ((64, 64, 128), (128, 128, 256), (128, 128, 256), (128, 128, 256))  # times the scale
FP_WIDTH_1X = 512  # the original's 1x FP layers are [.., 512, 512]; wider ones are [.., 256s, 256s]
FP_WIDTH_PER_SCALE = 256
FP_LAYERS = 2
VARIANTS_PER_BLOCK = 4  # compiled variants of one block: with and without grad, with and without autocast
XYZ_CHANNELS = 3


def fp_width(scale: int) -> int:
    """Output channels of fp1 and fp2: 512 at 1x and 2x, 768 at 3x, 1024 at 4x."""
    return FP_WIDTH_1X if scale == 1 else FP_WIDTH_PER_SCALE * scale


class BatchNorm(nn.Module):
    """BatchNorm2d held as `.bn`, reproducing the original's `...bn.bn.weight` keys."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class ConvBNReLU(nn.Module):
    """1x1 Conv2d without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight)
        self.bn = BatchNorm(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SharedMLP(nn.Sequential):
    """ConvBNReLU layers `layer0`, `layer1`, ... of the given widths (first = input channels)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        for i, (cin, cout) in enumerate(pairwise(widths)):
            self.add_module(f"layer{i}", ConvBNReLU(cin, cout))


def group_and_pool(
    mlp: nn.Module,
    xyz: torch.Tensor,
    centres: torch.Tensor,
    features: torch.Tensor | None,
    idx: torch.Tensor,
    radius: float | None,
) -> torch.Tensor:
    """The dense half of a set abstraction: the neighbours idx [B, M, K] of each centre as offsets (divided by
    `radius` unless it is None) followed by their features [B, C, N], the shared `mlp`, max over the K
    neighbours: [B, C', M]."""
    offsets = ops.group(xyz.transpose(1, 2).contiguous(), idx) - centres.transpose(1, 2)[..., None]
    grouped = offsets if radius is None else offsets / radius
    if features is not None:
        grouped = torch.cat([grouped.to(features.dtype), ops.group_float32(features, idx)], dim=1)
    return mlp(grouped).max(dim=-1).values


class FusedBlock(nn.Module):
    """A block whose dense part (`dense`, no point ops) can be swapped for a compiled copy by `fuse()`."""

    def __init__(self) -> None:
        super().__init__()
        self._fused: Callable[..., torch.Tensor] | None = None

    def dense(self, *args: Any) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self) -> None:
        """Run `dense` through torch.compile from now on (fixed shapes; the point ops stay outside)."""
        self._fused = torch.compile(self.dense, dynamic=False)

    def run_dense(self, *args: Any) -> torch.Tensor:
        return (self._fused or self.dense)(*args)


class SetAbstraction(FusedBlock):
    """One SA level: sample `npoint` centres, group within `radius`, shared MLP, max-pool."""

    def __init__(self, npoint: int, radius: float, nsample: int, widths: Sequence[int], backend: str = "auto"):
        super().__init__()
        self.npoint, self.radius, self.nsample, self.backend = npoint, radius, nsample, backend
        self.mlp_module = SharedMLP(widths)

    def dense(
        self, xyz: torch.Tensor, centres: torch.Tensor, features: torch.Tensor | None, idx: torch.Tensor
    ) -> torch.Tensor:
        """Offsets divided by the radius, then the features; shared MLP; max-pool."""
        return group_and_pool(self.mlp_module, xyz, centres, features, idx, self.radius)

    def sample(self, xyz: torch.Tensor) -> torch.Tensor:
        """This level's centres in xyz [B, N, 3]: farthest-point-sampling indices [B, npoint]."""
        return ops.farthest_point_sample(xyz, self.npoint, backend=self.backend)

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None, inds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xyz [B, N, 3], features [B, C, N] or None (and the centres' indices, if `sample` ran already) ->
        centres [B, M, 3], features [B, C', M], inds."""
        inds = self.sample(xyz) if inds is None else inds
        centres = ops.gather_points(xyz, inds)
        idx = ops.ball_query(xyz, centres, self.radius, self.nsample, backend=self.backend)
        return centres, self.run_dense(xyz, centres, features, idx), inds


class FeaturePropagation(FusedBlock):
    """One FP level: interpolate known features onto unknown points, append the skip (if any), shared `mlp`."""

    def __init__(self, mlp: nn.Module, backend: str = "auto"):
        super().__init__()
        self.mlp, self.backend = mlp, backend

    def dense(
        self,
        dist: torch.Tensor,
        idx: torch.Tensor,
        unknown_features: torch.Tensor | None,
        known_features: torch.Tensor,
    ) -> torch.Tensor:
        """Inverse-distance weights of the three neighbours, the skip features appended, shared MLP."""
        stacked = ops.interpolate(dist, idx, known_features)
        if unknown_features is not None:
            stacked = torch.cat([stacked, unknown_features.to(stacked.dtype)], dim=1)
        return self.mlp(stacked[..., None])[..., 0]

    def forward(
        self,
        unknown_xyz: torch.Tensor,
        known_xyz: torch.Tensor,
        unknown_features: torch.Tensor | None,
        known_features: torch.Tensor,
    ) -> torch.Tensor:
        """[B, n, 3], [B, m, 3], [B, C1, n] or None, [B, C2, m] -> [B, C', n]."""
        ops.check_known_features(known_xyz, known_features)
        dist, idx = ops.three_nn(unknown_xyz, known_xyz, self.backend)
        return self.run_dense(dist, idx, unknown_features, known_features)


def first_level_centres(sa: nn.Module, *views: torch.Tensor) -> list[torch.Tensor]:
    """The first SA level's centres (FPS indices [B, npoint]) of each view batch [B, N, 3 + C], in one launch.

    Sampling reads xyz only and treats every cloud on its own, so this equals one call per view; one launch
    keeps twice as many GPU cores busy in the step's longest serial kernel.
    """
    clouds = torch.cat([view[..., :XYZ_CHANNELS] for view in views]).contiguous()
    return list(sa.sample(clouds).split([len(view) for view in views]))


def fuse_point_blocks(model: nn.Module) -> int:
    """Compile the dense part of every SA and FP block of `model` (see FusedBlock); returns how many.

    Dynamo keeps one cache per code object, shared by every instance of a block class: each instance, in each
    grad and autocast mode it runs in, takes an entry. The limit grows by what these blocks can take, so none falls
    back to eager (also when a process builds several models, as the benchmarks do).
    """
    blocks = [module for module in model.modules() if isinstance(module, FusedBlock)]
    for block in blocks:
        block.fuse()
    if blocks:
        per_class = Counter(type(block) for block in blocks)
        config = torch._dynamo.config
        config.recompile_limit += VARIANTS_PER_BLOCK * max(per_class.values())
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * config.recompile_limit)
    return len(blocks)


def _check_architecture(scale: int, npoints: Sequence[int]) -> None:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ConfigError(f"PointNet++ scale must be a positive integer (1 to 4 in the paper), got {scale!r}")
    if len(npoints) != len(SA_NPOINTS) or any(not isinstance(n, int) or n < 1 for n in npoints):
        raise ConfigError(f"PointNet++ npoints must be {len(SA_NPOINTS)} positive integers, got {list(npoints)}")
    if any(later > earlier for earlier, later in pairwise(npoints)):
        raise ConfigError(f"PointNet++ npoints must not increase from one level to the next, got {list(npoints)}")
    if npoints[-1] < ops.NUM_NEIGHBOURS:
        raise ConfigError(f"PointNet++ needs at least {ops.NUM_NEIGHBOURS} sa4 points to interpolate from")


class PointNet2SSG(nn.Module):
    """The original's PointNet++ SSG backbone at width `scale`; `npoints` sets the SA centre counts.

    `backend` picks the point-op implementation ("auto", "torch" or "triton"; see ops.py).
    """

    def __init__(
        self,
        scale: int = 1,
        input_feature_dim: int = 0,
        npoints: Sequence[int] = SA_NPOINTS,
        backend: str = "auto",
    ):
        super().__init__()
        _check_architecture(scale, npoints)
        self.scale, self.input_feature_dim = scale, input_feature_dim
        in_channels = input_feature_dim
        for level, (npoint, radius, nsample, widths) in enumerate(
            zip(npoints, SA_RADII, SA_NSAMPLES, SA_WIDTHS, strict=True), start=1
        ):
            scaled = [w * scale for w in widths]
            sa = SetAbstraction(npoint, radius, nsample, [in_channels + XYZ_CHANNELS, *scaled], backend)
            self.add_module(f"sa{level}", sa)
            in_channels = scaled[-1]
        sa2_channels, sa3_channels = SA_WIDTHS[1][-1] * scale, SA_WIDTHS[2][-1] * scale
        width = fp_width(scale)
        self.fp1 = FeaturePropagation(SharedMLP([sa3_channels + in_channels] + [width] * FP_LAYERS), backend)
        self.fp2 = FeaturePropagation(SharedMLP([sa2_channels + width] + [width] * FP_LAYERS), backend)

    @property
    def out_channels(self) -> int:
        """Channels of `fp2_features`."""
        return fp_width(self.scale)

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None, first_inds: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """xyz [B, N, 3] (and features [B, input_feature_dim, N]; sa1's centres from `first_level_centres`, if
        they were sampled already) -> the original's end points.

        Keys: sa{1..4}_{xyz,features,inds}, fp1_features, fp2_features [B, C, M2], fp2_xyz [B, M2, 3]
        and fp2_inds [B, M2] (indices into the input cloud), with M2 = npoints[1].
        """
        if (features is None) != (self.input_feature_dim == 0):
            raise ValueError(f"the backbone was built for {self.input_feature_dim} input feature channels")
        out: dict[str, torch.Tensor] = {}
        for level in range(1, len(SA_NPOINTS) + 1):
            xyz, features, inds = getattr(self, f"sa{level}")(xyz, features, first_inds if level == 1 else None)
            out[f"sa{level}_xyz"], out[f"sa{level}_features"], out[f"sa{level}_inds"] = xyz, features, inds
        out["fp1_features"] = self.fp1(out["sa3_xyz"], out["sa4_xyz"], out["sa3_features"], out["sa4_features"])
        out["fp2_features"] = self.fp2(out["sa2_xyz"], out["sa3_xyz"], out["sa2_features"], out["fp1_features"])
        out["fp2_xyz"] = out["sa2_xyz"]
        out["fp2_inds"] = torch.gather(out["sa1_inds"], 1, out["sa2_inds"])
        return out
