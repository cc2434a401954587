"""The original DepthContrast code's geometric view augmentations: crops, a drop, flips, rotations, scalings.

Each is a frozen dataclass named in the augment.TRANSFORMS table; its fields are its parameters (config
`augmentation_overrides.<name>`), their defaults the original's (the schema holds the same defaults;
tests/test_defaults.py checks that they agree). Where the original has a quirk, the default reproduces it and the
fix is an option: random_rotate_all draws the axis with two draws, giving x/y/z probabilities ≈ 0.33/0.44/0.23;
`uniform_axis: true` picks each axis with probability 1/3.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from depthcontrast.data.point_cloud import PointCloud, require

ORIGINAL_CUBOID_CROP = 0.5  # smallest crop fraction of the extent per axis ("crop")
ORIGINAL_CUBOID_RANDCROP = 1.0  # largest crop fraction ("randcrop")
ORIGINAL_CUBOID_ASPECT = 0.75  # some pair of axes must have min/max crop fraction ≥ this ("aspect")
ORIGINAL_CUBOID_NPOINTS = 10000  # a crop must hold more than this many points ("npoints")
ORIGINAL_MAX_TRIES = 100  # draws of crop fractions, and of crop centres, before settling for the last one
ORIGINAL_DROP_CROP = 0.2  # side of the dropped cube as a fraction of the extent per axis
ORIGINAL_SCALE_RANGE = (0.8, 1.2)
ORIGINAL_LIDAR_SCALE_RANGE = (0.95, 1.05)
ORIGINAL_LIDAR_MAX_YAW = math.pi / 4  # the original's comment says ±5°, its code rotates by up to ±45°
ORIGINAL_FLIP_PROBABILITY = 0.5
ORIGINAL_ROTATE_AXIS_THRESHOLDS = (0.33, 0.66)  # x if r1 ≤ 0.33, else y if a new r2 ≤ 0.66, else z


def _inside_box(columns: np.ndarray, low: np.ndarray, high: np.ndarray, strict: bool) -> np.ndarray:
    """Mask [P] of the points (columns: [axes, P]) with low ≤ p ≤ high on every axis (low < p < high if strict).

    Compares in the bounds' dtype (float64 bounds against float32 points compare in float64), as an
    elementwise test on the [P, axes] array would.
    """
    above, below = (np.greater, np.less) if strict else (np.greater_equal, np.less_equal)
    inside = above(columns[0], low[0]) & below(columns[0], high[0])
    for axis in range(1, len(columns)):
        inside &= above(columns[axis], low[axis])
        inside &= below(columns[axis], high[axis])
    return inside


def _rotation(axis: int, angle: float, dtype: np.dtype) -> np.ndarray:
    """Right-handed rotation matrix by `angle` about coordinate axis `axis` (0 = x, 1 = y, 2 = z)."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    if axis == 1:  # keep the right-hand rule for y: z → x is the positive direction
        rot = rot.T
    return rot.astype(dtype)


@dataclass(frozen=True)
class RandomCuboid:
    """Keep the points inside a random box (the original's `randomcuboid`), inclusive bounds.

    Per axis, the box side is the cloud's extent times a fraction drawn from U[crop, randcrop]; the
    fractions are redrawn (≤ max_tries draws, then the last is used) until some pair of axes has
    min/max ≥ aspect. The box is centred on a random point, and re-centred (≤ max_tries, then the
    last) until it holds more than `npoints` points. The centre itself is always kept.
    """

    NAME: ClassVar[str] = "random_cuboid"
    AXES: ClassVar[int] = 3

    crop: float = ORIGINAL_CUBOID_CROP
    randcrop: float = ORIGINAL_CUBOID_RANDCROP
    aspect: float = ORIGINAL_CUBOID_ASPECT
    npoints: int = ORIGINAL_CUBOID_NPOINTS
    max_tries: int = ORIGINAL_MAX_TRIES

    def __post_init__(self) -> None:
        require(
            0 < self.crop <= self.randcrop <= 1,
            self.NAME,
            f"need 0 < crop ≤ randcrop ≤ 1, got crop={self.crop}, randcrop={self.randcrop}",
        )
        require(0 <= self.aspect <= 1, self.NAME, f"aspect must be in [0, 1], got {self.aspect}")
        require(self.npoints >= 0, self.NAME, f"npoints must be ≥ 0, got {self.npoints}")
        require(self.max_tries >= 1, self.NAME, f"max_tries must be ≥ 1, got {self.max_tries}")

    def _fractions(self, rng: np.random.Generator) -> np.ndarray:
        """Crop fractions per axis: the first of max_tries draws passing the aspect test, else the last."""
        draws = rng.uniform(self.crop, self.randcrop, size=(self.max_tries, self.AXES))
        pairs = np.array(list(itertools.combinations(range(self.AXES), 2)))
        a, b = draws[:, pairs[:, 0]], draws[:, pairs[:, 1]]
        passes = (np.minimum(a, b) / np.maximum(a, b) >= self.aspect).any(axis=1)
        return draws[np.argmax(passes)] if passes.any() else draws[-1]

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        coords = cloud.xyz[:, : self.AXES]
        columns = np.ascontiguousarray(coords.T)  # reductions and tests on contiguous rows: far faster than [P, 3]
        half = (columns.max(axis=1) - columns.min(axis=1)) * self._fractions(rng) / 2.0
        for _ in range(self.max_tries):
            centre = coords[rng.integers(len(coords))]
            inside = _inside_box(columns, centre - half, centre + half, strict=False)
            if np.count_nonzero(inside) > self.npoints:
                break
        return cloud.select(inside)


@dataclass(frozen=True)
class RandomCuboidLidar(RandomCuboid):
    """`random_cuboid` in the ground plane only (the original's `randomcuboidLidar`): x/y box, unbounded in z."""

    NAME: ClassVar[str] = "random_cuboid_lidar"
    AXES: ClassVar[int] = 2


@dataclass(frozen=True)
class RandomDrop:
    """Remove the points strictly inside a cube around a random point (the original's `randomdrop`).

    The cube's side per axis is `crop` times the cloud's extent along that axis.
    """

    NAME: ClassVar[str] = "random_drop"

    crop: float = ORIGINAL_DROP_CROP

    def __post_init__(self) -> None:
        require(0 < self.crop <= 1, self.NAME, f"crop must be in (0, 1], got {self.crop}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        columns = np.ascontiguousarray(cloud.xyz.T)
        half = (columns.max(axis=1) - columns.min(axis=1)) * self.crop / 2.0
        centre = cloud.xyz[rng.integers(len(cloud))]
        inside = _inside_box(columns, centre - half, centre + half, strict=True)
        return cloud.select(~inside)


@dataclass(frozen=True)
class RandomFlip:
    """Negate x, then independently y, each with probability 1/2 (the original's `RandomFlip`)."""

    NAME: ClassVar[str] = "random_flip"

    flip_x: bool = True
    flip_y: bool = True

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        signs = np.ones(3, dtype=cloud.xyz.dtype)
        for axis, enabled in ((0, self.flip_x), (1, self.flip_y)):
            if enabled and rng.random() > ORIGINAL_FLIP_PROBABILITY:
                signs[axis] = -1
        return cloud.with_xyz(cloud.xyz * signs)


@dataclass(frozen=True)
class RandomFlipLidar(RandomFlip):
    """Negate y with probability 1/2 (the original's `RandomFlipLidar`)."""

    NAME: ClassVar[str] = "random_flip_lidar"

    flip_x: bool = False


@dataclass(frozen=True)
class RandomRotateAll:
    """Rotate by an angle U[−π, π) about a random coordinate axis (the original's `RandomRotateAll`).

    uniform_axis false (the original): x if r1 ≤ 0.33, else y if a second draw r2 ≤ 0.66, else z — so
    x/y/z come with probabilities ≈ 0.33/0.44/0.23. uniform_axis true: each axis 1/3.
    """

    NAME: ClassVar[str] = "random_rotate_all"

    uniform_axis: bool = False

    def _axis(self, rng: np.random.Generator) -> int:
        if self.uniform_axis:
            return int(rng.integers(3))
        x_until, y_until = ORIGINAL_ROTATE_AXIS_THRESHOLDS
        if rng.random() <= x_until:
            return 0
        return 1 if rng.random() <= y_until else 2

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        angle = rng.uniform(-math.pi, math.pi)
        rot = _rotation(self._axis(rng), angle, cloud.xyz.dtype)
        return cloud.with_xyz(cloud.xyz @ rot.T)


@dataclass(frozen=True)
class RandomRotateLidar:
    """Rotate about the up (z) axis by an angle U[−max_angle, max_angle] (the original: ±π/4)."""

    NAME: ClassVar[str] = "random_rotate_lidar"

    max_angle: float = ORIGINAL_LIDAR_MAX_YAW

    def __post_init__(self) -> None:
        require(0 <= self.max_angle <= math.pi, self.NAME, f"max_angle must be in [0, π], got {self.max_angle}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        rot = _rotation(2, rng.uniform(-self.max_angle, self.max_angle), cloud.xyz.dtype)
        return cloud.with_xyz(cloud.xyz @ rot.T)


@dataclass(frozen=True)
class RandomScale:
    """Scale xyz by one factor drawn from U[low, high] (the original's `RandomScale`: 0.8–1.2)."""

    NAME: ClassVar[str] = "random_scale"

    low: float = ORIGINAL_SCALE_RANGE[0]
    high: float = ORIGINAL_SCALE_RANGE[1]

    def __post_init__(self) -> None:
        require(0 < self.low <= self.high, self.NAME, f"need 0 < low ≤ high, got low={self.low}, high={self.high}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        return cloud.with_xyz(cloud.xyz * cloud.xyz.dtype.type(rng.uniform(self.low, self.high)))


@dataclass(frozen=True)
class RandomScaleLidar(RandomScale):
    """`random_scale` with the original's LiDAR range 0.95–1.05 (the original's `RandomScaleLidar`)."""

    NAME: ClassVar[str] = "random_scale_lidar"

    low: float = ORIGINAL_LIDAR_SCALE_RANGE[0]
    high: float = ORIGINAL_LIDAR_SCALE_RANGE[1]
