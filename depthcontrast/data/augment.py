"""The seed's per-view point augmentations, as numpy transforms built from a list of config dicts.

Each transform takes a `PointCloud` (xyz [P, 3] plus per-point extras such as rgb or labels, kept
aligned through every crop and resample) and a `np.random.Generator`; all randomness comes from that
generator, so a view is reproducible from a seed. Transforms never modify their input in place.

Two seed presets, in the seed's order (see SEED_FACTS §4):
- indoor (ScanNet depth frames): random_cuboid → random_drop → multiscale → random_flip →
  random_rotate_all → random_scale → resample (20000 points);
- LiDAR (Waymo sweeps): random_cuboid_lidar → random_drop → random_flip_lidar → random_rotate_lidar →
  random_scale_lidar → resample_lidar (16384 points, far points kept first).
Before the list, a cloud larger than `max_input_points` (seed: 50000) is cut to a random subset.

Seed quirks: the defaults reproduce the seed; where a fix exists it is an option.
- random_rotate_all draws the axis with two draws, giving x/y/z probabilities ≈ 0.33/0.44/0.23;
  `uniform_axis: true` picks each axis with probability 1/3.
- resample_lidar: when more far points (≥ far_range) exist than are asked for, the seed's code
  raises; we take a random subset of all points, which is what its code goes on to do.
- The seed appends a height column (z minus the 0.99th percentile of z, i.e. ~1 %, not 99 %) that
  its point encoder never reads; we feed xyz only, so no height column is made.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from depthcontrast.errors import ConfigError, DataError, SampleError
from depthcontrast.yaml_numbers import yaml_number_hint

SEED_MAX_INPUT_POINTS = 50000  # the seed cuts every input cloud to a random 50000-point subset first
SEED_CUBOID_CROP = 0.5  # smallest crop fraction of the extent per axis ("crop")
SEED_CUBOID_RANDCROP = 1.0  # largest crop fraction ("randcrop")
SEED_CUBOID_ASPECT = 0.75  # some pair of axes must have min/max crop fraction ≥ this ("aspect")
SEED_CUBOID_NPOINTS = 10000  # a crop must hold more than this many points ("npoints")
SEED_MAX_TRIES = 100  # draws of crop fractions, and of crop centres, before settling for the last one
SEED_DROP_CROP = 0.2  # side of the dropped cube as a fraction of the extent per axis
SEED_MULTISCALE_SIZES = (5000, 10000, 15000, 20000)
SEED_SCALE_RANGE = (0.8, 1.2)
SEED_RESAMPLE_NPOINTS = 20000
SEED_LIDAR_SCALE_RANGE = (0.95, 1.05)
SEED_LIDAR_MAX_YAW = math.pi / 4  # the seed's comment says ±5°, its code rotates by up to ±45°
SEED_LIDAR_RESAMPLE_NPOINTS = 16384
SEED_LIDAR_FAR_RANGE_M = 40.0  # points at least this far from the sensor are kept first
SEED_FLIP_PROBABILITY = 0.5
SEED_ROTATE_AXIS_THRESHOLDS = (0.33, 0.66)  # x if r1 ≤ 0.33, else y if a new r2 ≤ 0.66, else z


@dataclass(frozen=True)
class PointCloud:
    """xyz [P, 3] plus per-point arrays (features, labels) with P rows that follow every selection."""

    xyz: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise DataError(f"point cloud xyz must have shape [P, 3], got {list(self.xyz.shape)}")
        for name, values in self.extras.items():
            if len(values) != len(self.xyz):
                raise DataError(f"point cloud extra {name!r} has {len(values)} rows for {len(self.xyz)} points")

    def __len__(self) -> int:
        return len(self.xyz)

    def select(self, index: np.ndarray) -> PointCloud:
        """The points at `index` (a boolean mask or integer indices), extras included."""
        return PointCloud(self.xyz[index], {name: values[index] for name, values in self.extras.items()})

    def with_xyz(self, xyz: np.ndarray) -> PointCloud:
        """The same points moved to `xyz` (same order), extras unchanged."""
        return PointCloud(xyz, self.extras)


class Transform(Protocol):
    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud: ...


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"augmentation {name!r}: {message}")


def _sample_indices(rng: np.random.Generator, available: int, count: int) -> np.ndarray:
    """`count` random indices into `available` points; with replacement only when there are too few."""
    return rng.choice(available, count, replace=available < count)


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
    """Keep the points inside a random box (seed `randomcuboid`), inclusive bounds.

    Per axis, the box side is the cloud's extent times a fraction drawn from U[crop, randcrop]; the
    fractions are redrawn (≤ max_tries draws, then the last is used) until some pair of axes has
    min/max ≥ aspect. The box is centred on a random point, and re-centred (≤ max_tries, then the
    last) until it holds more than `npoints` points. The centre itself is always kept.
    """

    NAME: ClassVar[str] = "random_cuboid"
    AXES: ClassVar[int] = 3

    crop: float = SEED_CUBOID_CROP
    randcrop: float = SEED_CUBOID_RANDCROP
    aspect: float = SEED_CUBOID_ASPECT
    npoints: int = SEED_CUBOID_NPOINTS
    max_tries: int = SEED_MAX_TRIES

    def __post_init__(self) -> None:
        _check(
            0 < self.crop <= self.randcrop <= 1,
            self.NAME,
            f"need 0 < crop ≤ randcrop ≤ 1, got crop={self.crop}, randcrop={self.randcrop}",
        )
        _check(0 <= self.aspect <= 1, self.NAME, f"aspect must be in [0, 1], got {self.aspect}")
        _check(self.npoints >= 0, self.NAME, f"npoints must be ≥ 0, got {self.npoints}")
        _check(self.max_tries >= 1, self.NAME, f"max_tries must be ≥ 1, got {self.max_tries}")

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
    """`random_cuboid` in the ground plane only (seed `randomcuboidLidar`): x/y box, unbounded in z."""

    NAME: ClassVar[str] = "random_cuboid_lidar"
    AXES: ClassVar[int] = 2


@dataclass(frozen=True)
class RandomDrop:
    """Remove the points strictly inside a cube around a random point (seed `randomdrop`).

    The cube's side per axis is `crop` times the cloud's extent along that axis.
    """

    NAME: ClassVar[str] = "random_drop"

    crop: float = SEED_DROP_CROP

    def __post_init__(self) -> None:
        _check(0 < self.crop <= 1, self.NAME, f"crop must be in (0, 1], got {self.crop}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        columns = np.ascontiguousarray(cloud.xyz.T)
        half = (columns.max(axis=1) - columns.min(axis=1)) * self.crop / 2.0
        centre = cloud.xyz[rng.integers(len(cloud))]
        inside = _inside_box(columns, centre - half, centre + half, strict=True)
        return cloud.select(~inside)


@dataclass(frozen=True)
class Multiscale:
    """Resample to a size drawn uniformly from `sizes` (with replacement if there are fewer points)."""

    NAME: ClassVar[str] = "multiscale"

    sizes: Sequence[int] = SEED_MULTISCALE_SIZES

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        valid = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in self.sizes)
        _check(
            len(self.sizes) > 0 and valid,
            self.NAME,
            f"sizes must be a non-empty list of positive integers, got {list(self.sizes)}",
        )

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        size = int(self.sizes[rng.integers(len(self.sizes))])
        return cloud.select(_sample_indices(rng, len(cloud), size))


@dataclass(frozen=True)
class RandomFlip:
    """Negate x, then independently y, each with probability 1/2 (seed `RandomFlip`)."""

    NAME: ClassVar[str] = "random_flip"

    flip_x: bool = True
    flip_y: bool = True

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        signs = np.ones(3, dtype=cloud.xyz.dtype)
        for axis, enabled in ((0, self.flip_x), (1, self.flip_y)):
            if enabled and rng.random() > SEED_FLIP_PROBABILITY:
                signs[axis] = -1
        return cloud.with_xyz(cloud.xyz * signs)


@dataclass(frozen=True)
class RandomFlipLidar(RandomFlip):
    """Negate y with probability 1/2 (seed `RandomFlipLidar`)."""

    NAME: ClassVar[str] = "random_flip_lidar"

    flip_x: bool = False


@dataclass(frozen=True)
class RandomRotateAll:
    """Rotate by an angle U[−π, π) about a random coordinate axis (seed `RandomRotateAll`).

    uniform_axis false (seed): x if r1 ≤ 0.33, else y if a second draw r2 ≤ 0.66, else z — so
    x/y/z come with probabilities ≈ 0.33/0.44/0.23. uniform_axis true: each axis 1/3.
    """

    NAME: ClassVar[str] = "random_rotate_all"

    uniform_axis: bool = False

    def _axis(self, rng: np.random.Generator) -> int:
        if self.uniform_axis:
            return int(rng.integers(3))
        x_until, y_until = SEED_ROTATE_AXIS_THRESHOLDS
        if rng.random() <= x_until:
            return 0
        return 1 if rng.random() <= y_until else 2

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        angle = rng.uniform(-math.pi, math.pi)
        rot = _rotation(self._axis(rng), angle, cloud.xyz.dtype)
        return cloud.with_xyz(cloud.xyz @ rot.T)


@dataclass(frozen=True)
class RandomRotateLidar:
    """Rotate about the up (z) axis by an angle U[−max_angle, max_angle] (seed: ±π/4)."""

    NAME: ClassVar[str] = "random_rotate_lidar"

    max_angle: float = SEED_LIDAR_MAX_YAW

    def __post_init__(self) -> None:
        _check(0 <= self.max_angle <= math.pi, self.NAME, f"max_angle must be in [0, π], got {self.max_angle}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        rot = _rotation(2, rng.uniform(-self.max_angle, self.max_angle), cloud.xyz.dtype)
        return cloud.with_xyz(cloud.xyz @ rot.T)


@dataclass(frozen=True)
class RandomScale:
    """Scale xyz by one factor drawn from U[low, high] (seed `RandomScale`: 0.8–1.2)."""

    NAME: ClassVar[str] = "random_scale"

    low: float = SEED_SCALE_RANGE[0]
    high: float = SEED_SCALE_RANGE[1]

    def __post_init__(self) -> None:
        _check(0 < self.low <= self.high, self.NAME, f"need 0 < low ≤ high, got low={self.low}, high={self.high}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        return cloud.with_xyz(cloud.xyz * cloud.xyz.dtype.type(rng.uniform(self.low, self.high)))


@dataclass(frozen=True)
class RandomScaleLidar(RandomScale):
    """`random_scale` with the seed's LiDAR range 0.95–1.05 (seed `RandomScaleLidar`)."""

    NAME: ClassVar[str] = "random_scale_lidar"

    low: float = SEED_LIDAR_SCALE_RANGE[0]
    high: float = SEED_LIDAR_SCALE_RANGE[1]


@dataclass(frozen=True)
class Resample:
    """Exactly `npoints` random points, with replacement only if there are fewer (seed `ToTensor`).

    The output stays numpy; turning views into tensors is the Dataset's job.
    """

    NAME: ClassVar[str] = "resample"

    npoints: int = SEED_RESAMPLE_NPOINTS

    def __post_init__(self) -> None:
        _check(self.npoints >= 1, self.NAME, f"npoints must be ≥ 1, got {self.npoints}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        return cloud.select(_sample_indices(rng, len(cloud), self.npoints))


@dataclass(frozen=True)
class ResampleLidar:
    """Exactly `npoints` points in random order, far points first (seed `ToTensorLidar`).

    With more points than asked: every point at range ≥ far_range is kept and the rest is filled
    with random near points; if the far points alone are enough, a random subset of all points.
    With fewer (or as many): all points plus random repeats (without replacement while possible).
    """

    NAME: ClassVar[str] = "resample_lidar"

    npoints: int = SEED_LIDAR_RESAMPLE_NPOINTS
    far_range: float = SEED_LIDAR_FAR_RANGE_M

    def __post_init__(self) -> None:
        _check(self.npoints >= 1, self.NAME, f"npoints must be ≥ 1, got {self.npoints}")
        _check(self.far_range > 0, self.NAME, f"far_range must be > 0, got {self.far_range}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        count = len(cloud)
        if self.npoints < count:
            far = np.linalg.norm(cloud.xyz, axis=1) >= self.far_range
            far_index = np.flatnonzero(far)
            if self.npoints > len(far_index):
                near = rng.choice(np.flatnonzero(~far), self.npoints - len(far_index), replace=False)
                choice = np.concatenate([far_index, near])
            else:
                choice = rng.choice(count, self.npoints, replace=False)
        else:
            missing = self.npoints - count
            choice = np.concatenate([np.arange(count), rng.choice(count, missing, replace=missing > count)])
        return cloud.select(rng.permutation(choice))


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

INDOOR_SEED_AUGMENTATIONS: list[dict[str, Any]] = [
    {
        "name": "random_cuboid",
        "crop": SEED_CUBOID_CROP,
        "randcrop": SEED_CUBOID_RANDCROP,
        "aspect": SEED_CUBOID_ASPECT,
        "npoints": SEED_CUBOID_NPOINTS,
    },
    {"name": "random_drop", "crop": SEED_DROP_CROP},
    {"name": "multiscale", "sizes": list(SEED_MULTISCALE_SIZES)},
    {"name": "random_flip"},
    {"name": "random_rotate_all", "uniform_axis": False},
    {"name": "random_scale", "low": SEED_SCALE_RANGE[0], "high": SEED_SCALE_RANGE[1]},
    {"name": "resample", "npoints": SEED_RESAMPLE_NPOINTS},
]

LIDAR_SEED_AUGMENTATIONS: list[dict[str, Any]] = [
    {
        "name": "random_cuboid_lidar",
        "crop": SEED_CUBOID_CROP,
        "randcrop": SEED_CUBOID_RANDCROP,
        "aspect": SEED_CUBOID_ASPECT,
        "npoints": SEED_CUBOID_NPOINTS,
    },
    {"name": "random_drop", "crop": SEED_DROP_CROP},
    {"name": "random_flip_lidar"},
    {"name": "random_rotate_lidar", "max_angle": SEED_LIDAR_MAX_YAW},
    {"name": "random_scale_lidar", "low": SEED_LIDAR_SCALE_RANGE[0], "high": SEED_LIDAR_SCALE_RANGE[1]},
    {"name": "resample_lidar", "npoints": SEED_LIDAR_RESAMPLE_NPOINTS, "far_range": SEED_LIDAR_FAR_RANGE_M},
]


@dataclass(frozen=True)
class Compose:
    """Apply `transforms` in order, after cutting clouds over `max_input_points` to a random subset."""

    transforms: tuple[Transform, ...]
    max_input_points: int | None = SEED_MAX_INPUT_POINTS

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        if len(cloud) == 0:
            raise SampleError("empty", "cannot augment a point cloud with no points")
        if self.max_input_points is not None and len(cloud) > self.max_input_points:
            cloud = cloud.select(rng.choice(len(cloud), self.max_input_points, replace=False))
        for transform in self.transforms:
            cloud = transform(cloud, rng)
        return cloud


def build_transform(spec: Mapping[str, Any]) -> Transform:
    """One transform from `{name: <snake_case name>, <param>: value, ...}`; unset params take seed values."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"an augmentation must be a mapping with a 'name' key, got {spec!r}")
    params = {key: value for key, value in spec.items() if key != "name"}
    name = spec["name"]
    cls = TRANSFORMS.get(name)
    if cls is None:
        raise ConfigError(f"unknown augmentation {name!r} (known: {', '.join(TRANSFORMS)})")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"augmentation {name!r}: unknown parameter(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in params.items():
        _check_param_type(name, key, value, defaults[key])
    return cls(**params)


def _check_param_type(name: str, key: str, value: Any, default: Any) -> None:
    """ConfigError unless `value` has the kind of the parameter's default (number, integer, flag, list)."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, (int, np.integer)) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float, np.number)) and not isinstance(value, bool), "a number"
    elif isinstance(default, (tuple, list)):
        ok, kind = isinstance(value, (tuple, list)), "a list"
    else:
        return
    if not ok:
        hint = yaml_number_hint(value, integer=kind == "an integer")
        raise ConfigError(f"augmentation {name!r}: {key} must be {kind}, got {value!r}{hint}")


def build_transforms(
    specs: Sequence[Mapping[str, Any]], max_input_points: int | None = SEED_MAX_INPUT_POINTS
) -> Compose:
    """A `Compose` of the listed augmentations, e.g. `build_transforms(INDOOR_SEED_AUGMENTATIONS)`."""
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
