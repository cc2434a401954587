"""Two augmented views per sample, read from shards: the pretraining input pipeline.

Randomness is stateless: the views of sample i in epoch e come from a generator seeded with
(seed, e, i), so results do not depend on the number of DataLoader workers or on where a resumed
run restarts. Items are fetched by `(epoch, index)` keys (see data/sampler.py), so DataLoader
workers can persist across epochs.

A run whose `formats` include "voxel" also gets two voxel views per sample ("voxel_a", "voxel_b"),
as the seed's LiDAR joint runs: two more independent passes of the augmentations without the final
resampling (the seed's voxel branch keeps every point), voxelised (data/voxelize.py). Their
randomness comes from a generator of its own, so the point views are the same with or without them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, default_collate

from depthcontrast.data.augment import (
    INDOOR_SEED_AUGMENTATIONS,
    LIDAR_SEED_AUGMENTATIONS,
    Compose,
    PointCloud,
    build_transforms,
    two_views,
)
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.data.voxelize import VoxelGrid, Voxels, collate_voxels, voxelize
from depthcontrast.errors import ConfigError

log = logging.getLogger(__name__)

AUGMENTATION_PRESETS = {"indoor": INDOOR_SEED_AUGMENTATIONS, "lidar": LIDAR_SEED_AUGMENTATIONS}
RESAMPLERS = ("resample", "resample_lidar")
FORMATS = ("point", "voxel")
VOXEL_STREAM = 1  # extra seed component of the voxel views' generator


def run_formats(run: Mapping[str, Any]) -> tuple[str, ...]:
    """The input formats a validated run trains, point first (no `formats` key: point only)."""
    formats = tuple(name for name in FORMATS if name in (run.get("formats") or ("point",)))
    if "voxel" in formats and not run.get("voxel_backbone"):
        raise ConfigError("formats lists voxel but the run has no voxel_backbone block (e.g. {name: spconv_unet})")
    return formats


def augmentation_specs(
    preset: str, overrides: Mapping[str, Mapping[str, Any]], points_per_view: int
) -> list[dict[str, Any]]:
    """The preset's augmentation list with per-name parameter overrides and the final point count set."""
    specs = copy.deepcopy(AUGMENTATION_PRESETS[preset])
    names = [spec["name"] for spec in specs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"augmentation_overrides: {unknown} not in the {preset} preset ({', '.join(names)})")
    for spec in specs:
        spec.update(overrides.get(spec["name"], {}))
        if spec["name"] in RESAMPLERS:
            spec["npoints"] = points_per_view
    return specs


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
    """Item i → {"view_a": float32 [N, 3 + C], "view_b": ..., "index": i}, over several shard dirs.

    The C columns after xyz are the `features` the backbone reads (none by default); they follow
    their points through every augmentation.
    """

    def __init__(
        self,
        shard_dirs: Sequence[Path],
        transforms: Compose,
        seed: int,
        verify: bool = True,
        features: InputFeatures | None = None,
        formats: Sequence[str] = ("point",),
        voxel_grid: VoxelGrid | None = None,
        voxel_features: InputFeatures | None = None,
        voxel_transforms: Compose | None = None,
    ):
        features = features or InputFeatures()
        voxel_features = voxel_features or InputFeatures()
        if "voxel" in formats and voxel_grid is None:
            raise ConfigError("a voxel format needs a voxel grid (voxel_backbone block)")
        shards = [ShardDataset(Path(d), verify=verify) for d in shard_dirs]
        for dataset in shards:
            for reader, wanted in (("backbone", features), ("voxel_backbone", voxel_features)):
                _check_input_features(dataset, reader, wanted)
        if verify:  # once here, before workers fork: they inherit the result instead of each re-hashing
            for dataset in shards:
                dataset.verify_all()
        self.shards = shards
        self.source = ConcatDataset(shards)
        self.transforms = transforms
        self.seed = seed
        self.features = features
        self.formats = tuple(formats)
        self.voxel_grid = voxel_grid
        self.voxel_features = voxel_features
        self.voxel_transforms = voxel_transforms or transforms
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (sampler keys carry their own epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        item = self.source[index]
        extras = {}
        if self.features.names:
            extras["features"] = self._features(index, item, self.features)
        if "voxel" in self.formats and self.voxel_features.names:
            extras["voxel_features"] = self._features(index, item, self.voxel_features)
        cloud = PointCloud(item["points"], extras)
        out: dict[str, Any] = {"index": index}
        if "point" in self.formats:
            rng = np.random.default_rng([self.seed, epoch, index])
            view_a, view_b = two_views(cloud, self.transforms, rng)
            out |= {"view_a": self._array(view_a), "view_b": self._array(view_b)}
        if "voxel" in self.formats:
            rng = np.random.default_rng([self.seed, epoch, index, VOXEL_STREAM])
            voxel_a, voxel_b = two_views(cloud, self.voxel_transforms, rng)
            out |= {"voxel_a": self._voxels(voxel_a), "voxel_b": self._voxels(voxel_b)}
        return out

    def _voxels(self, view: PointCloud) -> Voxels:
        assert self.voxel_grid is not None
        columns = [view.xyz, *([view.extras["voxel_features"]] if self.voxel_features.names else [])]
        return voxelize(np.concatenate(columns, axis=1, dtype=np.float32), self.voxel_grid)

    def _features(self, index: int, item: dict[str, Any], wanted: InputFeatures) -> np.ndarray:
        shard = self.shards[int(np.searchsorted(self.source.cumulative_sizes, index, side="right"))]
        return wanted.columns(
            len(item["points"]), item.get("features"), shard.feature_names, shard.index.feature_channels,
            source=f"{shard.shard_dir}: {item['sample_id']}", present=item.get("features_present"),
        )  # fmt: skip

    def _array(self, view: PointCloud) -> np.ndarray:
        if not self.features.names:
            return np.ascontiguousarray(view.xyz, dtype=np.float32)
        return np.concatenate([view.xyz, view.extras["features"]], axis=1, dtype=np.float32)


def collate_views(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """DataLoader collate: voxel views through `collate_voxels`, everything else as torch's default."""
    return {
        key: collate_voxels([item[key] for item in items])
        if isinstance(items[0][key], Voxels)
        else default_collate([item[key] for item in items])
        for key in items[0]
    }


def build_view_dataset(shard_dirs: Sequence[Path], run: Mapping[str, Any]) -> TwoViewDataset:
    """The dataset a pretraining run (validated config block) trains on."""
    specs = augmentation_specs(run["augmentations"], run["augmentation_overrides"], run["points_per_view"])
    features = InputFeatures.of_backbone(run["backbone"])
    formats = run_formats(run)
    if "voxel" not in formats:
        return TwoViewDataset(
            shard_dirs, build_transforms(specs), seed=run["seed"], verify=run["verify_shards"], features=features
        )
    voxel_block = run["voxel_backbone"]
    return TwoViewDataset(
        shard_dirs,
        build_transforms(specs),
        seed=run["seed"],
        verify=run["verify_shards"],
        features=features if "point" in formats else InputFeatures(),
        formats=formats,
        voxel_grid=VoxelGrid.of_backbone(voxel_block),
        voxel_features=InputFeatures.of_backbone(voxel_block),
        voxel_transforms=build_transforms([spec for spec in specs if spec["name"] not in RESAMPLERS]),
    )
