"""The original DepthContrast code's per-view point augmentations: the transform table, the two presets, and the
pipeline that makes two views of a cloud.

Two presets (config `augmentations`), each in the original's order:
- indoor (ScanNet depth frames): random_cuboid → random_drop → multiscale → random_flip →
  random_rotate_all → random_scale → resample (to points_per_view);
- lidar (Waymo sweeps): random_cuboid_lidar → random_drop → random_flip_lidar → random_rotate_lidar →
  random_scale_lidar → resample_lidar (to points_per_view, far points kept first).
Before the list, a cloud larger than `max_input_points` (the original: 50000) is cut to a random subset. The
transforms are in data/geometric.py and data/resample.py; their parameters come from the run's
`augmentation_overrides` (schema-checked), the others keep the original's values.

The original appends a height column (z minus the 0.99th percentile of z, i.e. ~1 %, not 99 %) that its point
encoder never reads; we feed xyz only, so no height column is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from depthcontrast.data.geometric import (
    RandomCuboid,
    RandomCuboidLidar,
    RandomDrop,
    RandomFlip,
    RandomFlipLidar,
    RandomRotateAll,
    RandomRotateLidar,
    RandomScale,
    RandomScaleLidar,
)
from depthcontrast.data.point_cloud import PointCloud, Transform
from depthcontrast.data.resample import Multiscale, Resample, ResampleLidar
from depthcontrast.errors import ConfigError, SampleError

ORIGINAL_MAX_INPUT_POINTS = 50000  # the original cuts every input cloud to a random 50000-point subset first

TRANSFORMS: dict[str, type] = {
    cls.NAME: cls
    for cls in (
        RandomCuboid,
        RandomDrop,
        Multiscale,
        RandomFlip,
        RandomRotateAll,
        RandomScale,
        Resample,
        RandomCuboidLidar,
        RandomFlipLidar,
        RandomRotateLidar,
        RandomScaleLidar,
        ResampleLidar,
    )
}
PRESETS: dict[str, tuple[str, ...]] = {
    "indoor": ("random_cuboid", "random_drop", "multiscale", "random_flip", "random_rotate_all", "random_scale",
               "resample"),
    "lidar": ("random_cuboid_lidar", "random_drop", "random_flip_lidar", "random_rotate_lidar", "random_scale_lidar",
              "resample_lidar"),
}  # fmt: skip
RESAMPLERS = ("resample", "resample_lidar")  # the last transform: to the view's point count (points_per_view)


@dataclass(frozen=True)
class TransformSpec:
    """One augmentation: its TRANSFORMS name and the parameters it is given (the others keep their defaults)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


def preset_transforms(
    preset: str, overrides: Mapping[str, Mapping[str, Any]], points_per_view: int
) -> tuple[TransformSpec, ...]:
    """The preset's augmentations with their `overrides` (validated `augmentation_overrides`), the resampler
    set to `points_per_view`; ConfigError for an override of an augmentation the preset does not list."""
    names = PRESETS[preset]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"augmentation_overrides: {unknown} not in the {preset} preset ({', '.join(names)})")
    specs = []
    for name in names:
        params = dict(overrides.get(name, {}))
        if name in RESAMPLERS:
            params["npoints"] = points_per_view
        specs.append(TransformSpec(name, params))
    return tuple(specs)


@dataclass(frozen=True)
class Compose:
    """Apply `transforms` in order, after cutting clouds over `max_input_points` to a random subset."""

    transforms: tuple[Transform, ...]
    max_input_points: int | None = ORIGINAL_MAX_INPUT_POINTS

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        if len(cloud) == 0:
            raise SampleError("empty", "cannot augment a point cloud with no points")
        if self.max_input_points is not None and len(cloud) > self.max_input_points:
            cloud = cloud.select(rng.choice(len(cloud), self.max_input_points, replace=False))
        for transform in self.transforms:
            cloud = transform(cloud, rng)
        return cloud


def build_transform(spec: TransformSpec) -> Transform:
    """The transform `spec` names, with its parameters (checked by the schema, their values by the transform)."""
    cls = TRANSFORMS.get(spec.name)
    if cls is None:
        raise ConfigError(f"unknown augmentation {spec.name!r} (known: {', '.join(TRANSFORMS)})")
    return cls(**spec.params)


def build_transforms(
    specs: tuple[TransformSpec, ...], max_input_points: int | None = ORIGINAL_MAX_INPUT_POINTS
) -> Compose:
    """A `Compose` of the listed augmentations, e.g. `build_transforms(preset_transforms("indoor", {}, 20000))`."""
    if max_input_points is not None and max_input_points < 1:
        raise ConfigError(f"max_input_points must be ≥ 1 or null, got {max_input_points}")
    return Compose(tuple(build_transform(spec) for spec in specs), max_input_points)


def two_views(
    points: PointCloud | np.ndarray,
    transforms: Callable[[PointCloud, np.random.Generator], PointCloud],
    rng: np.random.Generator,
) -> tuple[PointCloud, PointCloud]:
    """Two independent augmentations of one cloud (xyz [P, 3] or a PointCloud).

    Each view draws from its own child generator seeded from `rng`, so the pair is reproducible
    from `rng`'s seed and view a does not depend on how many draws view b takes.
    """
    cloud = points if isinstance(points, PointCloud) else PointCloud(np.asarray(points))
    seed_a, seed_b = rng.integers(0, np.iinfo(np.int64).max, size=2)
    return transforms(cloud, np.random.default_rng(seed_a)), transforms(cloud, np.random.default_rng(seed_b))
