"""The point-view augmentations of data/augment.py, batched in torch on the training device (`augment_on: gpu`).

Every transform of both presets has a batched twin here, taking the same parameters (the CPU transform object
that `build_transform` makes from the run's TransformSpec, so defaults and checks are shared) and drawing from
the same distributions: the same probabilities, the same first-passing-try-else-last rules of random_cuboid,
the same with-/without-replacement rules of multiscale and the resamplers, far points first in resample_lidar.
The draws themselves differ from the numpy path (another generator), so views are not bit-identical to it.

A batch of clouds is a padded tensor [N, P, 3 + C] (xyz, then the feature columns, which follow their points)
with a mask [N, P] of the points still in each cloud: crops and drops clear mask bits, resampling gathers rows,
and every shape depends on the parameters alone, never on the data. The one host sync is random_cuboid's: after
each pass of CENTRE_TRIES_PER_PASS centre draws it takes the clouds whose crop does not yet hold enough points
on to the next pass (often none are left after the first). All draws are made up front in a fixed order and
shape, so the views are a pure function of the generator's seed: `view_generator` seeds it from (run seed,
epoch, batch index, rank).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from depthcontrast.data.augment import RESAMPLERS, TransformSpec, build_transform
from depthcontrast.data.geometric import (
    ORIGINAL_FLIP_PROBABILITY,
    ORIGINAL_ROTATE_AXIS_THRESHOLDS,
    RandomCuboid,
    RandomDrop,
    RandomFlip,
    RandomRotateAll,
    RandomRotateLidar,
    RandomScale,
)
from depthcontrast.data.resample import Multiscale, Resample, ResampleLidar
from depthcontrast.errors import ConfigError, DataError

CENTRE_TRIES_PER_PASS = 8  # random_cuboid centre draws tested at once; one host sync per pass
VIEWS = 2  # views per cloud (query, key)


@dataclass(frozen=True)
class Clouds:
    """N padded clouds: `points` [N, P, 3 + C] (xyz first) and `mask` [N, P], True for the points in each cloud."""

    points: torch.Tensor
    mask: torch.Tensor

    @property
    def xyz(self) -> torch.Tensor:
        return self.points[..., :3]

    def counts(self) -> torch.Tensor:
        """[N] the number of points in each cloud."""
        return self.mask.sum(1)

    def with_xyz(self, xyz: torch.Tensor) -> Clouds:
        """The same points moved to `xyz` [N, P, 3], features and mask unchanged."""
        return Clouds(torch.cat([xyz, self.points[..., 3:]], dim=2), self.mask)


def view_generator(seed: int, epoch: int, batch: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one batch's device views, on `device`, seeded from (run seed, epoch, batch index, rank):
    a resumed run makes the same views again, and DDP ranks (which share the batch index) draw independently."""
    state = np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


# ----------------------------------------------------------------------------------- draws
def _uniform(low: float, high: float, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator):
    """float64 draws from U[low, high) of `shape` on `like`'s device (numpy's `uniform`: low + (high - low) u)."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float64)
    return low + (high - low) * u


def _nth_member(mask: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """[N, K] the position of each cloud's rank-th member (0-based, rank < its count) in the padded rows."""
    return torch.searchsorted(mask.cumsum(1), rank + 1)


def _random_members(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """[N, count] positions of members drawn uniformly with replacement (numpy's `choice(n, count)`)."""
    members = mask.sum(1, keepdim=True)
    u = torch.rand((mask.shape[0], count), generator=generator, device=mask.device, dtype=torch.float64)
    return _nth_member(mask, torch.minimum((u * members).long(), members - 1))


def _random_order(mask: torch.Tensor, width: int, generator: torch.Generator, first: torch.Tensor | None = None):
    """[N, min(width, P)] positions: each cloud's members without repeats in random order, then the padding.

    `first` [N, P] (optional): members where it is True come before the others, each group in random order.
    """
    keys = torch.rand(mask.shape, generator=generator, device=mask.device, dtype=torch.float64)
    if first is not None:
        keys = keys - first.to(keys.dtype)
    keys = keys.masked_fill(~mask, math.inf)
    return keys.topk(min(width, mask.shape[1]), dim=1, largest=False).indices


def _take(order: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """[N, K] order's entries at columns [N, K], clamped to order's width (callers mask or replace those past it)."""
    return order.gather(1, columns.clamp(max=order.shape[1] - 1))


def _gather(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[N, K, D] the rows `index` [N, K] of `points` [N, P, D]."""
    return torch.take_along_dim(points, index[..., None], dim=1)


def _extent(xyz: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, axes] max − min of each cloud's member coordinates."""
    inside = mask[..., None]
    high = xyz.masked_fill(~inside, -math.inf).amax(1)
    low = xyz.masked_fill(~inside, math.inf).amin(1)
    return high - low


def _inside_boxes(xyz: torch.Tensor, low: torch.Tensor, high: torch.Tensor, strict: bool) -> torch.Tensor:
    """[N, K, P]: points of xyz [N, P, axes] with low ≤ p ≤ high on every axis (low < p < high if strict),
    for K boxes per cloud (low, high: [N, K, axes])."""
    above, below = (torch.gt, torch.lt) if strict else (torch.ge, torch.le)
    inside = None
    for axis in range(xyz.shape[2]):
        column = xyz[:, None, :, axis]
        test = above(column, low[..., axis, None]) & below(column, high[..., axis, None])
        inside = test if inside is None else inside & test
    return inside


def _subsample(clouds: Clouds, sizes: torch.Tensor, width: int, generator: torch.Generator) -> Clouds:
    """sizes[i] random points of cloud i in random order, padded to `width` ≥ sizes: without replacement, with
    replacement only when the cloud has fewer points (data/point_cloud.sample_indices)."""
    columns = torch.arange(width, device=sizes.device).expand(len(sizes), width)
    without = _take(_random_order(clouds.mask, width, generator), columns)
    with_replacement = _random_members(clouds.mask, width, generator)
    index = torch.where((clouds.counts() >= sizes)[:, None], without, with_replacement)
    return Clouds(_gather(clouds.points, index), columns < sizes[:, None])


# ----------------------------------------------------------------------------------- transforms
def crop_fractions(params: RandomCuboid, count: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[count, AXES] crop fractions: per row, the first of max_tries draws passing the aspect test, else the last."""
    draws = _uniform(params.crop, params.randcrop, (count, params.max_tries, params.AXES), like, generator)
    passes = torch.zeros(draws.shape[:2], dtype=torch.bool, device=like.device)
    for i, j in itertools.combinations(range(params.AXES), 2):
        a, b = draws[..., i], draws[..., j]
        passes |= torch.minimum(a, b) / torch.maximum(a, b) >= params.aspect
    pick = torch.where(passes.any(1), passes.int().argmax(1), params.max_tries - 1)
    return draws[torch.arange(count, device=like.device), pick]


def random_cuboid(params: RandomCuboid, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """RandomCuboid (and RandomCuboidLidar, AXES 2): keep an inclusive box of random fractions of the extent around
    a random point, re-centred until it holds more than npoints points (the first such of max_tries, else the
    last)."""
    n, axes = clouds.points.shape[0], params.AXES
    xyz = clouds.points[..., :axes]
    fractions = crop_fractions(params, n, xyz, generator)
    half = (_extent(xyz, clouds.mask) * fractions / 2).to(xyz.dtype)[:, None]
    centres = _random_members(clouds.mask, params.max_tries, generator)
    keep = torch.zeros_like(clouds.mask)
    todo = torch.arange(n, device=xyz.device)  # the clouds whose crop has not settled
    for start in range(0, params.max_tries, CENTRE_TRIES_PER_PASS):
        points, mask = xyz[todo], clouds.mask[todo]
        centre = _gather(points, centres[todo, start : start + CENTRE_TRIES_PER_PASS])
        inside = _inside_boxes(points, centre - half[todo], centre + half[todo], strict=False) & mask[:, None]
        enough = inside.sum(2) > params.npoints
        passed = enough.any(1)
        pick = torch.where(passed, enough.int().argmax(1), enough.shape[1] - 1)  # the first passing, else the last
        keep[todo] = inside[torch.arange(len(todo), device=xyz.device), pick]
        todo = todo[~passed]  # the host sync
        if len(todo) == 0:
            break
    return Clouds(clouds.points, keep)


def random_drop(params: RandomDrop, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """RandomDrop: remove the points strictly inside a cube of crop × the extent around a random point."""
    xyz = clouds.xyz
    half = (_extent(xyz, clouds.mask) * params.crop / 2)[:, None]
    centre = _gather(xyz, _random_members(clouds.mask, 1, generator))
    inside = _inside_boxes(xyz, centre - half, centre + half, strict=True)[:, 0]
    return Clouds(clouds.points, clouds.mask & ~inside)


def multiscale(params: Multiscale, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """Multiscale: resample each cloud to a size drawn uniformly from `sizes`."""
    device = clouds.points.device
    pick = torch.randint(len(params.sizes), (clouds.points.shape[0],), generator=generator, device=device)
    sizes = torch.zeros_like(pick)
    for choice, size in enumerate(params.sizes):  # a few fills on the device instead of a host copy
        sizes.masked_fill_(pick == choice, size)
    return _subsample(clouds, sizes, max(params.sizes), generator)


def resample(params: Resample, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """Resample: exactly npoints random points."""
    sizes = torch.full((clouds.points.shape[0],), params.npoints, device=clouds.points.device)
    return _subsample(clouds, sizes, params.npoints, generator)


def resample_lidar(params: ResampleLidar, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """ResampleLidar: exactly npoints points in random order. Downsampling keeps every point at range ≥ far_range
    and fills up with random near points (a random subset of all when the far points alone are enough); upsampling
    keeps every point and adds random repeats, without replacement while there are enough points."""
    n, width, mask = clouds.points.shape[0], params.npoints, clouds.mask
    counts = clouds.counts()[:, None]
    far = (torch.linalg.vector_norm(clouds.xyz, dim=2) >= params.far_range) & mask
    far_first = far & (far.sum(1, keepdim=True) < width) & (width < counts)
    order = _random_order(mask, width, generator, first=far_first)
    columns = torch.arange(width, device=mask.device).expand(n, width)
    extra = (columns - counts).clamp(min=0)  # upsampling: the repeats after every point once
    repeats = torch.where(width - counts > counts, _random_members(mask, width, generator), _take(order, extra))
    up = torch.where(columns < counts, _nth_member(mask, torch.minimum(columns, counts - 1)), repeats)
    choice = torch.where(width < counts, _take(order, columns), up)
    shuffle = torch.rand((n, width), generator=generator, device=mask.device).argsort(1)
    index = choice.gather(1, shuffle)
    return Clouds(_gather(clouds.points, index), torch.ones_like(index, dtype=torch.bool))


def random_flip(params: RandomFlip, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """RandomFlip (and RandomFlipLidar): negate x, then independently y, each with probability 1/2 where enabled."""
    xyz = clouds.xyz
    draws = torch.rand((xyz.shape[0], 2), generator=generator, device=xyz.device, dtype=torch.float64)
    flips = draws > ORIGINAL_FLIP_PROBABILITY
    for axis, enabled in enumerate((params.flip_x, params.flip_y)):
        if not enabled:
            flips[:, axis] = False
    signs = torch.ones((xyz.shape[0], 3), dtype=xyz.dtype, device=xyz.device)
    signs[:, :2] = torch.where(flips, -1.0, 1.0).to(xyz.dtype)
    return clouds.with_xyz(xyz * signs[:, None])


def rotations(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] right-handed rotations by `angle` [N] about coordinate axis `axis` [N] (0 = x, 1 = y, 2 = z), the
    matrices of geometric._rotation."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    about = (
        ((one, zero, zero), (zero, c, -s), (zero, s, c)),
        ((c, zero, s), (zero, one, zero), (-s, zero, c)),
        ((c, -s, zero), (s, c, zero), (zero, zero, one)),
    )
    stacked = torch.stack([torch.stack([torch.stack(row, -1) for row in m], -2) for m in about])  # [3, N, 3, 3]
    return stacked[axis, torch.arange(len(axis), device=axis.device)]


def _rotate(clouds: Clouds, axis: torch.Tensor, angle: torch.Tensor) -> Clouds:
    rot = rotations(axis, angle).to(clouds.points.dtype)
    return clouds.with_xyz(torch.bmm(clouds.xyz, rot.transpose(1, 2)))


def random_rotate_all(params: RandomRotateAll, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """RandomRotateAll: an angle U[−π, π) about x, y or z (the original's uneven 0.33/0.44/0.23, or uniform)."""
    n, like = clouds.points.shape[0], clouds.points
    angle = _uniform(-math.pi, math.pi, (n,), like, generator)
    if params.uniform_axis:
        axis = torch.randint(3, (n,), generator=generator, device=like.device)
    else:
        x_until, y_until = ORIGINAL_ROTATE_AXIS_THRESHOLDS
        r = torch.rand((n, 2), generator=generator, device=like.device, dtype=torch.float64)
        axis = torch.where(r[:, 0] <= x_until, 0, torch.where(r[:, 1] <= y_until, 1, 2))
    return _rotate(clouds, axis, angle)


def random_rotate_lidar(params: RandomRotateLidar, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """RandomRotateLidar: about z by an angle U[−max_angle, max_angle]."""
    n, like = clouds.points.shape[0], clouds.points
    angle = _uniform(-params.max_angle, params.max_angle, (n,), like, generator)
    return _rotate(clouds, torch.full((n,), 2, device=like.device), angle)


def random_scale(params: RandomScale, clouds: Clouds, generator: torch.Generator) -> Clouds:
    """RandomScale (and RandomScaleLidar): xyz times one factor U[low, high] per cloud."""
    factor = _uniform(params.low, params.high, (clouds.points.shape[0], 1, 1), clouds.points, generator)
    return clouds.with_xyz(clouds.xyz * factor.to(clouds.points.dtype))


DeviceTransform = Callable[[Any, Clouds, torch.Generator], Clouds]
DEVICE_TRANSFORMS: dict[str, DeviceTransform] = {
    "random_cuboid": random_cuboid,
    "random_drop": random_drop,
    "multiscale": multiscale,
    "random_flip": random_flip,
    "random_rotate_all": random_rotate_all,
    "random_scale": random_scale,
    "resample": resample,
    "random_cuboid_lidar": random_cuboid,
    "random_flip_lidar": random_flip,
    "random_rotate_lidar": random_rotate_lidar,
    "random_scale_lidar": random_scale,
    "resample_lidar": resample_lidar,
}  # the batched twin of each augment.TRANSFORMS entry, which supplies its parameters


# ----------------------------------------------------------------------------------- pipeline
class DeviceViews:
    """The run's augmentations (`views.transforms`: a preset, its overrides, the final resampler) on batches of
    clouds, on whatever device they are."""

    def __init__(self, specs: tuple[TransformSpec, ...]):
        if not specs or specs[-1].name not in RESAMPLERS:
            raise ConfigError(f"device augmentations must end with one of {', '.join(RESAMPLERS)} (the view size)")
        steps = []
        for spec in specs:
            params = build_transform(spec)  # ConfigError for unknown names and bad values, as on the CPU
            steps.append((DEVICE_TRANSFORMS[spec.name], params))
        self.steps: tuple[tuple[DeviceTransform, Any], ...] = tuple(steps)
        self.points_per_view: int = steps[-1][1].npoints

    def augment(self, clouds: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One view of each cloud: clouds [N, P, 3 + C] (padded), counts [N] (1 ≤ count ≤ P, checked: best kept on
        the CPU, where the check costs no sync) → float32 [N, points_per_view, 3 + C]."""
        clouds, counts = _checked(clouds, counts, leading=1)
        mask = torch.arange(clouds.shape[1], device=clouds.device) < counts[:, None]
        batch = Clouds(clouds, mask)
        for transform, params in self.steps:
            batch = transform(params, batch, generator)
        return batch.points

    def __call__(
        self, clouds: torch.Tensor, counts: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(view_a, view_b), each float32 [B, points_per_view, 3 + C], from clouds [B, P, 3 + C] (both views of the
        same cloud) or [B, 2, P, 3 + C] (a cloud per view, as the dataset's `clouds`) and counts [B]."""
        clouds, counts = _checked(clouds, counts, leading=2 if clouds.dim() == 4 else 1)
        batch = len(counts)
        if clouds.dim() == 3:
            clouds = clouds[:, None].expand(-1, VIEWS, -1, -1)
        stacked = clouds.transpose(0, 1).reshape(VIEWS * batch, *clouds.shape[2:])  # all view a, then all view b
        views = self.augment(stacked, counts.repeat(VIEWS), generator)
        return views[:batch], views[batch:]


def _checked(clouds: torch.Tensor, counts: torch.Tensor, leading: int) -> tuple[torch.Tensor, torch.Tensor]:
    """clouds as float32 and counts on their device, after DataError checks of their shapes and counts."""
    shape = list(clouds.shape)
    if clouds.dim() != 2 + leading or shape[-1] < 3 or (leading == 2 and shape[1] != VIEWS):
        expected = "[B, P, 3 + C] or [B, 2, P, 3 + C]"
        raise DataError(f"device augmentations take clouds of shape {expected}, got {shape}")
    if not clouds.is_floating_point():
        raise DataError(f"device augmentations take float clouds, got {clouds.dtype}")
    if counts.shape != (shape[0],) or counts.is_floating_point():
        raise DataError(f"device augmentations take one integer count per cloud ({shape[0]}), got {list(counts.shape)}")
    if shape[0] and not 1 <= int(counts.min()) <= int(counts.max()) <= shape[-2]:
        raise DataError(f"point counts must be in [1, {shape[-2]}] (the padded size), got {counts.tolist()}")
    return clouds.float(), counts.to(clouds.device, non_blocking=True)  # pinned by the DataLoader: no sync
