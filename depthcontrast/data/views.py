"""Two augmented views per sample, read from shards: the pretraining input pipeline.

Randomness is stateless: the views of sample i in epoch e come from a generator seeded with
(seed, e, i), so results do not depend on the number of DataLoader workers or on where a resumed
run restarts. Items are fetched by `(epoch, index)` keys (see data/sampler.py), so DataLoader
workers can persist across epochs.

A run whose representations include "voxel" also gets two voxel views per sample ("voxel_a", "voxel_b"),
as the original's LiDAR joint runs: two more independent passes of the augmentations without the final
resampling (the original's voxel branch keeps every point), voxelised (data/voxelize.py). Their
randomness comes from a generator of its own, so the point views are the same with or without them.

A run with `augment_on: gpu` gets no point views here: an item holds the clouds its two views start from
("clouds": each view's cut to max_input_points, the very cuts the CPU path makes; "count": their size), and the
trainer makes the views on its device (data/gpu_augment.py). `collate_views` pads them to the batch's largest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, default_collate

from depthcontrast.data.augment import Compose, build_transforms, two_views
from depthcontrast.data.point_cloud import PointCloud
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.data.voxelize import VoxelGrid, Voxels, collate_voxels, voxelize
from depthcontrast.errors import ConfigError
from depthcontrast.specs import RunSpec

log = logging.getLogger(__name__)

VOXEL_STREAM = 1  # extra seed component of the voxel views' generator
CLOUDS = "clouds"  # an item's key for the cut clouds of its device-augmented views (augment_on: gpu)


@dataclass(frozen=True)
class PointViews:
    """How the point views of a sample are made: the augmentations, and the features read after xyz; `on_device`:
    only the cut to max_input_points here, the rest by the trainer (augment_on: gpu)."""

    transforms: Compose
    features: InputFeatures
    on_device: bool = False


@dataclass(frozen=True)
class VoxelViews:
    """How the voxel views of a sample are made: the augmentations, the features averaged after x, y, z, the grid."""

    transforms: Compose
    features: InputFeatures
    grid: VoxelGrid


def _check_input_features(dataset: ShardDataset, reader: str, wanted: InputFeatures) -> None:
    """The shards store every feature the `reader` block reads; one that only some samples have is logged."""
    missing = wanted.missing_from(dataset.feature_names)
    if missing:
        have = ", ".join(dataset.feature_names) or "none"
        raise ConfigError(
            f"{dataset.shard_dir}: the {reader} reads {missing} but these shards have features: {have}; "
            f"pretrain on data that has them (preprocess.keep_features) or set {reader}.features: []"
        )
    for name in wanted.names:
        if dataset.feature_samples(name) < len(dataset):
            log.warning(
                "%s: %s in only %d of %d samples: the %s reads zeros for the others",
                dataset.shard_dir, name, dataset.feature_samples(name), len(dataset), reader,
            )  # fmt: skip


class TwoViewDataset(Dataset):
    """Item (epoch, i) → {"view_a": float32 [N, 3 + C], "view_b": ..., "index": i} with `point` views (on_device:
    {"clouds": float32 [2, n, 3 + C], "count": n} instead of the views), and {"voxel_a": Voxels, "voxel_b": ...}
    with `voxel` views, over several shard dirs (a plain index i: epoch 0).

    The C columns after xyz are the `features` the point backbone reads (none by default); they follow
    their points through every augmentation.
    """

    def __init__(
        self,
        shard_dirs: Sequence[Path],
        seed: int,
        verify: bool = True,
        point: PointViews | None = None,
        voxel: VoxelViews | None = None,
    ):
        shards = [ShardDataset(Path(d), verify=verify) for d in shard_dirs]
        for dataset in shards:
            for reader, views in (("backbone", point), ("voxel_backbone", voxel)):
                if views is not None:
                    _check_input_features(dataset, reader, views.features)
        if verify:  # once here, before workers fork: they inherit the result instead of each re-hashing
            for dataset in shards:
                dataset.verify_all()
        self.shards = shards
        self.source = ConcatDataset(shards)
        self.seed = seed
        self.point, self.voxel = point, voxel

    def __len__(self) -> int:
        return len(self.source)

    @property
    def augments_on_device(self) -> bool:
        """Whether its items hold cut clouds for the trainer to augment (augment_on: gpu) instead of point views."""
        return self.point is not None and self.point.on_device

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.source[index]
        extras = {}
        if self.point is not None and self.point.features.names:
            extras["features"] = self._features(index, item, self.point.features)
        if self.voxel is not None and self.voxel.features.names:
            extras["voxel_features"] = self._features(index, item, self.voxel.features)
        cloud = PointCloud(item["points"], extras)
        out: dict[str, Any] = {"index": index}
        if self.point is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            if self.point.on_device:
                cut_a, cut_b = two_views(cloud, Compose((), self.point.transforms.max_input_points), rng)
                out |= {CLOUDS: np.stack([self._array(cut_a, self.point), self._array(cut_b, self.point)]),
                        "count": len(cut_a)}  # fmt: skip
            else:
                view_a, view_b = two_views(cloud, self.point.transforms, rng)
                out |= {"view_a": self._array(view_a, self.point), "view_b": self._array(view_b, self.point)}
        if self.voxel is not None:
            rng = np.random.default_rng([self.seed, epoch, index, VOXEL_STREAM])
            voxel_a, voxel_b = two_views(cloud, self.voxel.transforms, rng)
            out |= {"voxel_a": self._voxels(voxel_a, self.voxel), "voxel_b": self._voxels(voxel_b, self.voxel)}
        return out

    @staticmethod
    def _voxels(view: PointCloud, voxel: VoxelViews) -> Voxels:
        columns = [view.xyz, *([view.extras["voxel_features"]] if voxel.features.names else [])]
        return voxelize(np.concatenate(columns, axis=1, dtype=np.float32), voxel.grid)

    def _features(self, index: int, item: dict[str, Any], wanted: InputFeatures) -> np.ndarray:
        shard = self.shards[int(np.searchsorted(self.source.cumulative_sizes, index, side="right"))]
        return wanted.columns(
            len(item["points"]), item.get("features"), shard.feature_names, shard.index.feature_channels,
            source=f"{shard.shard_dir}: {item['sample_id']}", present=item.get("features_present"),
        )  # fmt: skip

    @staticmethod
    def _array(view: PointCloud, point: PointViews) -> np.ndarray:
        if not point.features.names:
            return np.ascontiguousarray(view.xyz, dtype=np.float32)
        return np.concatenate([view.xyz, view.extras["features"]], axis=1, dtype=np.float32)


def pad_clouds(clouds: Sequence[np.ndarray]) -> torch.Tensor:
    """float32 [B, 2, P, 3 + C] from B items' clouds [2, n_i, 3 + C], zero-padded to the largest n_i (P)."""
    views, _, width = clouds[0].shape
    out = np.zeros((len(clouds), views, max(cloud.shape[1] for cloud in clouds), width), dtype=np.float32)
    for row, cloud in enumerate(clouds):
        out[row, :, : cloud.shape[1]] = cloud
    return torch.from_numpy(out)


def collate_views(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """DataLoader collate: voxel views through `collate_voxels`, cut clouds through `pad_clouds`, everything else
    as torch's default."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], Voxels):
            out[key] = collate_voxels(values)
        elif key == CLOUDS:
            out[key] = pad_clouds(values)
        else:
            out[key] = default_collate(values)
    return out


def build_view_dataset(shard_dirs: Sequence[Path], run: RunSpec) -> TwoViewDataset:
    """The dataset a pretraining run trains on: the views of its representations, from its augmentations."""
    point = voxel = None
    if run.backbone is not None:
        point = PointViews(build_transforms(run.views.transforms), run.backbone.features, run.augment_on == "gpu")
    if run.voxel_backbone is not None:
        block = run.voxel_backbone
        voxel = VoxelViews(build_transforms(run.views.voxel_transforms), block.features, block.grid)
    if run.augment_on == "gpu" and point is None:
        log.warning("augment_on: gpu moves the point views only, and this run has none: its views stay on the CPU")
    return TwoViewDataset(shard_dirs, run.seed, verify=run.verify_shards, point=point, voxel=voxel)
