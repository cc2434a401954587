"""Two augmented views per sample, read from shards: the pretraining input pipeline.

Randomness is stateless: the views of sample i in epoch e come from a generator seeded with
(seed, e, i), so results do not depend on the number of DataLoader workers or on where a resumed
run restarts. Items are fetched by `(epoch, index)` keys (see data/sampler.py), so DataLoader
workers can persist across epochs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

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
from depthcontrast.errors import ConfigError

AUGMENTATION_PRESETS = {"indoor": INDOOR_SEED_AUGMENTATIONS, "lidar": LIDAR_SEED_AUGMENTATIONS}
RESAMPLERS = ("resample", "resample_lidar")


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
    ):
        features = features or InputFeatures()
        shards = [ShardDataset(Path(d), verify=verify) for d in shard_dirs]
        for dataset in shards:
            missing = features.missing_from(dataset.feature_names)
            if missing:
                have = ", ".join(dataset.feature_names) or "none"
                raise ConfigError(
                    f"{dataset.shard_dir}: the backbone reads {missing} but these shards have features: {have}; "
                    "pretrain on data that has them (preprocess.keep_features) or set backbone.features: []"
                )
        if verify:  # once here, before workers fork: they inherit the result instead of each re-hashing
            for dataset in shards:
                dataset.verify_all()
        self.shards = shards
        self.source = ConcatDataset(shards)
        self.transforms = transforms
        self.seed = seed
        self.features = features
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (sampler keys carry their own epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        item = self.source[index]
        cloud = PointCloud(item["points"])
        if self.features.names:
            cloud = PointCloud(item["points"], {"features": self._features(index, item)})
        rng = np.random.default_rng([self.seed, epoch, index])
        view_a, view_b = two_views(cloud, self.transforms, rng)
        return {"view_a": self._array(view_a), "view_b": self._array(view_b), "index": index}

    def _features(self, index: int, item: dict[str, Any]) -> np.ndarray:
        shard = self.shards[int(np.searchsorted(self.source.cumulative_sizes, index, side="right"))]
        return self.features.columns(
            len(item["points"]), item.get("features"), shard.feature_names, shard.index.feature_channels,
            source=f"{shard.shard_dir}: {item['sample_id']}",
        )  # fmt: skip

    def _array(self, view: PointCloud) -> np.ndarray:
        if not self.features.names:
            return np.ascontiguousarray(view.xyz, dtype=np.float32)
        return np.concatenate([view.xyz, view.extras["features"]], axis=1, dtype=np.float32)


def build_view_dataset(shard_dirs: Sequence[Path], run: Mapping[str, Any]) -> TwoViewDataset:
    """The dataset a pretraining run (validated config block) trains on."""
    specs = augmentation_specs(run["augmentations"], run["augmentation_overrides"], run["points_per_view"])
    features = InputFeatures.of_backbone(run["backbone"])
    return TwoViewDataset(
        shard_dirs, build_transforms(specs), seed=run["seed"], verify=run["verify_shards"], features=features
    )
