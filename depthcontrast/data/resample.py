"""The original DepthContrast code's resampling augmentations: to a random size, and to the view's point count.

Where the original's code has a quirk: resample_lidar, when more far points (≥ far_range) exist than are asked
for, raises in the original; we take a random subset of all points, which is what its code goes on to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from depthcontrast.data.point_cloud import PointCloud, require, sample_indices

ORIGINAL_MULTISCALE_SIZES = (5000, 10000, 15000, 20000)
ORIGINAL_RESAMPLE_NPOINTS = 20000
ORIGINAL_LIDAR_RESAMPLE_NPOINTS = 16384
ORIGINAL_LIDAR_FAR_RANGE_M = 40.0  # points at least this far from the sensor are kept first


@dataclass(frozen=True)
class Multiscale:
    """Resample to a size drawn uniformly from `sizes` (with replacement if there are fewer points)."""

    NAME: ClassVar[str] = "multiscale"

    sizes: Sequence[int] = ORIGINAL_MULTISCALE_SIZES

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        valid = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in self.sizes)
        require(
            len(self.sizes) > 0 and valid,
            self.NAME,
            f"sizes must be a non-empty list of positive integers, got {list(self.sizes)}",
        )

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        size = int(self.sizes[rng.integers(len(self.sizes))])
        return cloud.select(sample_indices(rng, len(cloud), size))


@dataclass(frozen=True)
class Resample:
    """Exactly `npoints` random points, with replacement only if there are fewer (the original's `ToTensor`).

    The output stays numpy; turning views into tensors is the Dataset's job.
    """

    NAME: ClassVar[str] = "resample"

    npoints: int = ORIGINAL_RESAMPLE_NPOINTS

    def __post_init__(self) -> None:
        require(self.npoints >= 1, self.NAME, f"npoints must be ≥ 1, got {self.npoints}")

    def __call__(self, cloud: PointCloud, rng: np.random.Generator) -> PointCloud:
        return cloud.select(sample_indices(rng, len(cloud), self.npoints))


@dataclass(frozen=True)
class ResampleLidar:
    """Exactly `npoints` points in random order, far points first (the original's `ToTensorLidar`).

    With more points than asked: every point at range ≥ far_range is kept and the rest is filled
    with random near points; if the far points alone are enough, a random subset of all points.
    With fewer (or as many): all points plus random repeats (without replacement while possible).
    """

    NAME: ClassVar[str] = "resample_lidar"

    npoints: int = ORIGINAL_LIDAR_RESAMPLE_NPOINTS
    far_range: float = ORIGINAL_LIDAR_FAR_RANGE_M

    def __post_init__(self) -> None:
        require(self.npoints >= 1, self.NAME, f"npoints must be ≥ 1, got {self.npoints}")
        require(self.far_range > 0, self.NAME, f"far_range must be > 0, got {self.far_range}")

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
