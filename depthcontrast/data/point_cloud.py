"""A point cloud as the view augmentations see it, and what every transform shares.

A transform takes a `PointCloud` (xyz [P, 3] plus per-point extras such as rgb or labels, kept aligned through
every crop and resample) and a `np.random.Generator`; all randomness comes from that generator, so a view is
reproducible from the generator's seed. Transforms never modify their input in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from depthcontrast.errors import ConfigError, DataError


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


def require(condition: bool, name: str, message: str) -> None:
    """ConfigError naming the augmentation `name` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"augmentation {name!r}: {message}")


def sample_indices(rng: np.random.Generator, available: int, count: int) -> np.ndarray:
    """`count` random indices into `available` points; with replacement only when there are too few."""
    return rng.choice(available, count, replace=available < count)
