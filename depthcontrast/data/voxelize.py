"""LiDAR voxelisation for the sparse-conv encoder: points → voxels with mean features (pure numpy).

What the original (spconv's VoxelGenerator) and OpenPCDet (`MeanVFE`) do together:
- a point at xyz falls in voxel floor((xyz − range_min) / voxel_size); points outside
  `point_range` = [xmin, ymin, zmin, xmax, ymax, zmax] are dropped; the grid is
  round((range_max − range_min) / voxel_size) voxels per axis (x, y, z);
- each voxel keeps its first `max_points_per_voxel` points in point order (the original: 5) and voxels
  are numbered in the order of their first point, keeping the first `max_voxels` (the original: 16000);
- a voxel's feature is the mean of its kept points' columns (x, y, z, then the point features:
  x, y, z, intensity for the original's 4 channels), its coordinate is the integer (z, y, x) index,
  the order spconv's indices and OpenPCDet's `voxel_coords` use.

Deterministic: the output is a pure function of the points and the settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from depthcontrast.errors import ConfigError

# the original's LiDAR voxels (the schema's backbone_voxel defaults; tests/test_defaults.py checks they agree)
ORIGINAL_VOXEL_SIZE = (0.1, 0.1, 0.2)  # metres (x, y, z)
ORIGINAL_POINT_RANGE = (0.0, -75.0, -3.0, 75.0, 75.0, 3.0)  # its UNetV2 range (Waymo)
ORIGINAL_MAX_POINTS_PER_VOXEL = 5
ORIGINAL_MAX_VOXELS = 16000


@dataclass(frozen=True)
class VoxelGrid:
    """Voxel size (x, y, z) in metres, the point range it covers and the per-voxel / per-cloud caps."""

    voxel_size: tuple[float, float, float] = ORIGINAL_VOXEL_SIZE
    point_range: tuple[float, float, float, float, float, float] = ORIGINAL_POINT_RANGE
    max_points_per_voxel: int = ORIGINAL_MAX_POINTS_PER_VOXEL
    max_voxels: int = ORIGINAL_MAX_VOXELS

    def __post_init__(self) -> None:
        size, low, high = np.asarray(self.voxel_size), np.asarray(self.point_range[:3]), self.point_range[3:]
        if len(self.voxel_size) != 3 or len(self.point_range) != 6 or np.any(size <= 0):
            raise ConfigError(f"voxel grid: voxel_size needs 3 positive numbers, point_range 6; got {self}")
        if np.any(np.asarray(high) <= low):
            raise ConfigError(f"voxel grid: point_range {list(self.point_range)} needs max > min on every axis")
        if self.max_points_per_voxel < 1 or self.max_voxels < 1:
            raise ConfigError("voxel grid: max_points_per_voxel and max_voxels must be ≥ 1")

    @property
    def grid_size(self) -> np.ndarray:
        """Voxels per axis, (x, y, z), as OpenPCDet computes its grid_size."""
        extent = np.asarray(self.point_range[3:], np.float64) - np.asarray(self.point_range[:3], np.float64)
        return np.round(extent / np.asarray(self.voxel_size, np.float64)).astype(np.int64)

    @property
    def sparse_shape(self) -> list[int]:
        """spconv spatial shape (z, y, x): the grid reversed with one more z plane (OpenPCDet's UNetV2)."""
        x, y, z = self.grid_size.tolist()
        return [z + 1, y, x]


@dataclass
class Voxels:
    """One cloud's voxels: features [M, C] float32 (mean of kept points), coords [M, 3] int32 (z, y, x),
    num_points [M] int32 (points averaged, ≤ max_points_per_voxel)."""

    features: np.ndarray
    coords: np.ndarray
    num_points: np.ndarray


def voxelize(points: np.ndarray, grid: VoxelGrid) -> Voxels:
    """Voxelise points [N, 3 + C] (xyz first): see the module docstring for the rules."""
    points = np.asarray(points, dtype=np.float32)
    low = np.asarray(grid.point_range[:3], np.float32)
    size = np.asarray(grid.voxel_size, np.float32)
    index = np.floor((points[:, :3] - low) / size).astype(np.int64)
    inside = np.all((index >= 0) & (index < grid.grid_size), axis=1)
    points, index = points[inside], index[inside]
    nx, ny, _ = grid.grid_size.tolist()
    linear = (index[:, 2] * ny + index[:, 1]) * nx + index[:, 0]

    keys, first, voxel_of_point = np.unique(linear, return_index=True, return_inverse=True)
    voxel_of_point = voxel_of_point.reshape(-1)
    rank = np.empty(len(keys), np.int64)  # voxels renumbered by their first point's position
    rank[np.argsort(first, kind="stable")] = np.arange(len(keys))
    voxel_of_point = rank[voxel_of_point]
    order = np.argsort(voxel_of_point, kind="stable")  # points grouped by voxel, point order kept inside
    starts = np.searchsorted(voxel_of_point[order], np.arange(len(keys)))
    position_in_voxel = np.empty(len(points), np.int64)
    position_in_voxel[order] = np.arange(len(points)) - np.repeat(starts, np.diff(np.append(starts, len(points))))
    kept = (position_in_voxel < grid.max_points_per_voxel) & (voxel_of_point < grid.max_voxels)

    count = min(len(keys), grid.max_voxels)
    voxel_ids = voxel_of_point[kept]
    num_points = np.bincount(voxel_ids, minlength=count).astype(np.int32)
    sums = np.zeros((count, points.shape[1]), np.float64)
    np.add.at(sums, voxel_ids, points[kept].astype(np.float64))
    features = (sums / np.maximum(num_points, 1)[:, None]).astype(np.float32)
    key_of_voxel = keys[np.argsort(rank)][:count]
    coords = np.stack([key_of_voxel // (nx * ny), (key_of_voxel // nx) % ny, key_of_voxel % nx], axis=1)
    return Voxels(features, coords.astype(np.int32), num_points)


def collate_voxels(clouds: Sequence[Voxels]) -> dict[str, Any]:
    """A batch for the sparse encoder: features [ΣM, C], coords [ΣM, 4] int32 (batch, z, y, x), batch_size."""
    import torch  # here: the config and specs read VoxelGrid without importing torch

    features = np.concatenate([v.features for v in clouds], axis=0)
    coords = np.concatenate(
        [np.concatenate([np.full((len(v.coords), 1), b, np.int32), v.coords], axis=1) for b, v in enumerate(clouds)],
        axis=0,
    )
    return {"features": torch.from_numpy(features), "coords": torch.from_numpy(coords), "batch_size": len(clouds)}
