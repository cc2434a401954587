"""Downstream tasks on labelled shards: merged class sets, sample groups, and group-disjoint splits.

A task kind fixes three things: the classes predicted, how a dataset's raw per-point labels map onto
them, and the group a sample belongs to (the LiDAR tile a crop was cut from, the room a depth frame
was taken in). Train and test never share a group, so nothing is learnt from a neighbouring crop or
another view of the same room.

LiDAR (ASPRS classification codes) → 4 classes:
    ground      2
    vegetation  3, 4, 5 (low, medium, high)
    building    6
    other       every other code (0 never classified, 1 unclassified, 9 water, 17 bridge deck,
                64+ user-defined, ...)
    ignored     7, 18 (low and high noise): not scored, not trained on

Indoor (depthcontrast/builtin/indoor/classes.json) → 5 classes:
    floor 1, wall 2, ceiling 3, table 4, object 5-7 (bunny, armadillo, chinese_dragon merged: at
    a few hundred labelled points per frame each kind has only a handful)
    ignored     0 (no return)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.records import UNLABELLED
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.errors import DataError

log = logging.getLogger(__name__)

IGNORE_LABEL = UNLABELLED  # points of unlabelled scans are neither scored nor trained on

LIDAR_CLASSES = ("ground", "vegetation", "building", "other")
LIDAR_ASPRS_TO_CLASS = {2: 0, 3: 1, 4: 1, 5: 1, 6: 2}
LIDAR_IGNORED_ASPRS = (0, 1, 7, 18)
LIDAR_OTHER = LIDAR_CLASSES.index("other")
ASPRS_CODES = 256  # classification is one byte in LAS 1.4 point formats 6-10

INDOOR_CLASSES = ("floor", "wall", "ceiling", "table", "object")
INDOOR_LABEL_TO_CLASS = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 4}
INDOOR_LABELS = 8  # 0 no_return ... 7 chinese_dragon

LIDAR_CROP_NAME = re.compile(r"^(?P<tile>.+)_\d+_\d+$")  # a built-in crop: <tile>_<ix>_<iy>
CORPUS_CROP_NAME = re.compile(r"^crop_\d+$")  # a corpus crop: <tile>/crop_<j>


def lidar_tile(sample_id: str) -> str:
    """The tile of a LiDAR crop: `demo_lidar/lidar/autzen_3_1` → `autzen` (its name minus `_<ix>_<iy>`), or
    `corpus_lidar/autzen/crop_00012` → `autzen` (a corpus crop's folder)."""
    parts = sample_id.split("/")
    if len(parts) >= 2 and CORPUS_CROP_NAME.match(parts[-1]):
        return parts[-2]
    match = LIDAR_CROP_NAME.match(parts[-1])
    if match is None:
        raise DataError(
            f"sample {sample_id!r}: neither a LiDAR crop <tile>_<ix>_<iy> nor <tile>/crop_<j>; cannot tell its tile"
        )
    return match["tile"]


def indoor_room(sample_id: str) -> str:
    """The room of a depth frame: `demo_indoor/indoor/room_03/000002` → `room_03` (its parent folder)."""
    parts = sample_id.split("/")
    if len(parts) < 2:
        raise DataError(f"sample {sample_id!r}: not <room>/<frame>; cannot tell its room")
    return parts[-2]


def _lookup_table(size: int, mapping: dict[int, int], default: int, ignored: Sequence[int] = ()) -> np.ndarray:
    table = np.full(size, default, dtype=np.int64)
    for raw, merged in mapping.items():
        table[raw] = merged
    table[list(ignored)] = IGNORE_LABEL
    return table


_LIDAR_TABLE = _lookup_table(ASPRS_CODES, LIDAR_ASPRS_TO_CLASS, LIDAR_OTHER, LIDAR_IGNORED_ASPRS)
_INDOOR_TABLE = _lookup_table(INDOOR_LABELS, INDOOR_LABEL_TO_CLASS, IGNORE_LABEL)


def _merged(raw: np.ndarray, table: np.ndarray, what: str) -> np.ndarray:
    """table[raw], with UNLABELLED points (scans without labels) → IGNORE_LABEL; other values must index it."""
    raw = np.asarray(raw)
    labelled = raw != UNLABELLED
    values = raw[labelled]
    if values.size and (values.min() < 0 or values.max() >= len(table)):
        raise DataError(f"{what} must be 0-{len(table) - 1} (or {UNLABELLED}), got {values.min()}..{values.max()}")
    merged = np.full(raw.shape, IGNORE_LABEL, dtype=table.dtype)
    merged[labelled] = table[values]
    return merged


def merge_lidar_labels(asprs: np.ndarray) -> np.ndarray:
    """ASPRS codes → LIDAR_CLASSES indices (IGNORE_LABEL for noise and unlabelled points)."""
    return _merged(asprs, _LIDAR_TABLE, "ASPRS classification codes")


def merge_indoor_labels(labels: np.ndarray) -> np.ndarray:
    """Built-in indoor class ids → INDOOR_CLASSES indices (IGNORE_LABEL for no_return and unlabelled points)."""
    return _merged(labels, _INDOOR_TABLE, "indoor class ids")


@dataclass(frozen=True)
class TaskKind:
    """What a task kind predicts and how it reads a dataset."""

    classes: tuple[str, ...]
    merge_labels: Callable[[np.ndarray], np.ndarray]
    group_of: Callable[[str], str]
    group_name: str  # what a group is, for messages ("tile", "room")


TASK_KINDS = {
    "lidar_segmentation": TaskKind(LIDAR_CLASSES, merge_lidar_labels, lidar_tile, "tile"),
    "indoor_segmentation": TaskKind(INDOOR_CLASSES, merge_indoor_labels, indoor_room, "room"),
}
OBJECT_CLASSIFICATION = "object_classification"  # one class per sample, its own protocol: evaluate/classification.py


@dataclass
class Samples:
    """Labelled clouds held in memory: points float32 [P_i, 3 + C] (xyz, then the C feature columns the
    backbone reads), merged labels int64 [P_i], id, group; `zero_features`: features the shards lack,
    given to the backbone as zeros."""

    points: list[np.ndarray]
    labels: list[np.ndarray]
    sample_ids: list[str]
    groups: list[str]
    zero_features: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class Split:
    train: Samples
    test: Samples

    def check_disjoint(self, group_name: str) -> None:
        """Raise DataError if a sample or a group is on both sides."""
        shared_ids = set(self.train.sample_ids) & set(self.test.sample_ids)
        shared_groups = set(self.train.groups) & set(self.test.groups)
        if shared_ids or shared_groups:
            raise DataError(
                f"train and test overlap: samples {sorted(shared_ids)[:5]}, {group_name}s {sorted(shared_groups)}"
            )


def task_kind(name: str) -> TaskKind:
    """The TaskKind called `name`, or DataError listing the known ones."""
    if name not in TASK_KINDS:
        known = ", ".join([*TASK_KINDS, OBJECT_CLASSIFICATION])
        raise DataError(f"unknown evaluation task kind {name!r} (known: {known})")
    return TASK_KINDS[name]


def load_samples(
    shard_dir: Path, kind: TaskKind, xyz_scale: float = 1.0, features: InputFeatures | None = None
) -> Samples:
    """Every sample of a shard directory with merged labels and its group; xyz multiplied by `xyz_scale`,
    followed by the `features` columns a backbone reads (zeros, with a warning, where the shards lack one:
    evaluation tasks apply to every run, and pretrained and scratch backbones then see the same zeros)."""
    features = features or InputFeatures()
    dataset = ShardDataset(shard_dir)
    if not dataset.has_labels:
        raise DataError(f"{shard_dir}: shards hold no per-point labels; preprocess with keep_labels: true")
    samples = Samples([], [], [], [], zero_features=features.missing_from(dataset.feature_names))
    if samples.zero_features:
        log.warning(
            "%s: the shards have no %s feature; the backbone reads zeros in its place",
            shard_dir,
            " or ".join(samples.zero_features),
        )
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            try:
                labels = kind.merge_labels(item["labels"])
            except DataError as exc:
                raise DataError(f"{shard_dir}: sample {item['sample_id']}: {exc}") from None
            points = np.multiply(item["points"], xyz_scale, dtype=np.float32)
            if features.names:
                columns = features.columns(
                    len(points), item.get("features"), dataset.feature_names, dataset.index.feature_channels,
                    source=f"{shard_dir}: {item['sample_id']}", missing_as_zeros=True,
                    present=item.get("features_present"),
                )  # fmt: skip
                points = np.concatenate([points, columns], axis=1)
            samples.points.append(points)
            samples.labels.append(labels)
            samples.sample_ids.append(item["sample_id"])
            samples.groups.append(kind.group_of(item["sample_id"]))
    finally:
        dataset.close()
    return samples


def _subset(samples: Samples, keep: list[int]) -> Samples:
    return Samples(
        [samples.points[i] for i in keep],
        [samples.labels[i] for i in keep],
        [samples.sample_ids[i] for i in keep],
        [samples.groups[i] for i in keep],
        samples.zero_features,
    )


def split_by_group(
    samples: Samples, test_groups: Sequence[str], group_name: str, source: str, train: Samples | None = None
) -> Split:
    """Samples of `test_groups` → test, the rest → train; or, given `train` (another dataset's samples), those
    train and every group of `samples` may test. Both sides must be non-empty and disjoint."""
    known = sorted(set(samples.groups))
    missing = sorted(set(test_groups) - set(known))
    if missing:
        raise DataError(f"{source}: test {group_name}s {missing} not in the data ({group_name}s: {', '.join(known)})")
    test_set = set(test_groups)
    test = [i for i, group in enumerate(samples.groups) if group in test_set]
    if train is None:
        train = _subset(samples, [i for i, group in enumerate(samples.groups) if group not in test_set])
        if not len(train):
            raise DataError(f"{source}: every {group_name} is a test {group_name}; nothing is left to train on")
    split = Split(train, _subset(samples, test))
    split.check_disjoint(group_name)
    return split
