"""The arrays of one shard: built from samples, re-laid out to a dataset's final feature set, and
written to or read back from an HDF5 file (the layout is documented in shards.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import h5py
import numpy as np

from depthcontrast.data.records import UNLABELLED, Sample
from depthcontrast.errors import DataError

LABEL_DTYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))
PRESENT, ABSENT = 1, 0


@dataclass(frozen=True)
class FeatureLayout:
    """The feature columns of a shard: names (sorted), channels per name, and one stored dtype."""

    names: tuple[str, ...]
    channels: tuple[int, ...]
    dtype: np.dtype

    def offsets(self) -> dict[str, tuple[int, int]]:
        """name -> (first, last + 1) column."""
        bounds, start = {}, 0
        for name, width in zip(self.names, self.channels, strict=True):
            bounds[name] = (start, start + width)
            start += width
        return bounds


@dataclass(frozen=True)
class ShardArrays:
    """Everything one shard stores, in memory.

    points:  float32 [P, 3] metres, or integers of the writer's xyz quantum
    features: [P, C] in `layout` order (absent values 0), None without features
    feature_present: uint8 [N, F]: 1 where sample n has feature f, None without features
    labels:  int64 [P] (UNLABELLED for samples without labels), None when the dataset has none
    origins: float64 [N, 3]: a sample's absolute coordinates are its points (in metres) + its origin
    """

    points: np.ndarray
    offsets: np.ndarray
    sample_ids: list[str]
    origins: np.ndarray
    layout: FeatureLayout
    features: np.ndarray | None
    feature_present: np.ndarray | None
    labels: np.ndarray | None


def feature_columns(sample: Sample) -> dict[str, np.ndarray]:
    """Sample features as 2-D [P, C] arrays, checked to have one row per point."""
    columns = {}
    for name, values in sample.features.items():
        array = np.asarray(values)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] != sample.num_points:
            raise DataError(
                f"sample {sample.sample_id}: feature {name!r} has shape {array.shape}, "
                f"expected ({sample.num_points}, C)"
            )
        columns[name] = array
    return columns


def arrays_from_samples(
    samples: Sequence[Sample], layout: FeatureLayout, has_labels: bool, points: np.ndarray
) -> ShardArrays:
    """A shard's arrays from its samples; `points` is their concatenated (maybe quantised) xyz."""
    counts = np.array([s.num_points for s in samples], dtype=np.int64)
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    features = present = None
    if layout.names:
        blocks, present = [], np.zeros((len(samples), len(layout.names)), dtype=np.uint8)
        for n, sample in enumerate(samples):
            columns = feature_columns(sample)
            row = []
            for f, (name, width) in enumerate(zip(layout.names, layout.channels, strict=True)):
                if name in columns:
                    row.append(columns[name].astype(layout.dtype, copy=False))
                    present[n, f] = PRESENT
                else:
                    row.append(np.zeros((sample.num_points, width), dtype=layout.dtype))
            blocks.append(np.concatenate(row, axis=1))
        features = np.concatenate(blocks)
    labels = None
    if has_labels:
        labels = np.concatenate(
            [
                np.full(s.num_points, UNLABELLED, np.int64) if s.labels is None else np.asarray(s.labels, np.int64)
                for s in samples
            ]
        )
    return ShardArrays(
        points=points,
        offsets=offsets,
        sample_ids=[s.sample_id for s in samples],
        origins=np.array([np.asarray(s.origin, np.float64) for s in samples]).reshape(len(samples), 3),
        layout=layout,
        features=features,
        feature_present=present,
        labels=labels,
    )


def relayout(arrays: ShardArrays, layout: FeatureLayout, has_labels: bool) -> ShardArrays:
    """The same shard with `layout`'s feature columns (absent ones 0 and marked absent) and labels or not."""
    num_samples, num_points = len(arrays.sample_ids), int(arrays.offsets[-1])
    features = present = None
    if layout.names:
        old = arrays.layout.offsets()
        blocks, present = [], np.zeros((num_samples, len(layout.names)), dtype=np.uint8)
        for f, (name, width) in enumerate(zip(layout.names, layout.channels, strict=True)):
            if name in old and arrays.features is not None:
                first, stop = old[name]
                blocks.append(arrays.features[:, first:stop].astype(layout.dtype))
                present[:, f] = arrays.feature_present[:, arrays.layout.names.index(name)]
            else:
                blocks.append(np.zeros((num_points, width), dtype=layout.dtype))
        features = np.concatenate(blocks, axis=1)
    labels = None
    if has_labels:
        labels = arrays.labels if arrays.labels is not None else np.full(num_points, UNLABELLED, np.int64)
    return replace(arrays, layout=layout, features=features, feature_present=present, labels=labels)


def write_arrays(
    h5: h5py.File, arrays: ShardArrays, dataset: Callable[[h5py.File, str, np.ndarray], h5py.Dataset]
) -> None:
    """Write the shard's datasets; `dataset(h5, name, data)` creates the point-axis ones (chunks, codec)."""
    dataset(h5, "points", arrays.points)
    if arrays.features is not None:
        dataset(h5, "features", arrays.features)
        h5.create_dataset("feature_present", data=arrays.feature_present, track_times=False)
    if arrays.labels is not None:
        dataset(h5, "labels", arrays.labels.astype(smallest_int(arrays.labels, arrays.sample_ids)))
    h5.create_dataset("offsets", data=arrays.offsets, track_times=False)
    ids = np.array([sample_id.encode() for sample_id in arrays.sample_ids], dtype=object)
    h5.create_dataset("sample_id", data=ids, dtype=h5py.string_dtype("utf-8"), track_times=False)
    h5.create_dataset("origin", data=arrays.origins, track_times=False)


def read_arrays(path: str) -> ShardArrays:
    """A written shard's arrays, exactly as stored (points keep their stored type)."""
    with h5py.File(path, "r", locking=False) as h5:
        names = tuple(str(name) for name in h5.attrs["feature_names"])
        channels = tuple(int(c) for c in h5.attrs["feature_channels"])
        features = h5["features"][:] if "features" in h5 else None
        dtype = features.dtype if features is not None else np.dtype(np.float32)
        return ShardArrays(
            points=h5["points"][:],
            offsets=h5["offsets"][:],
            sample_ids=list(h5["sample_id"].asstr()[:]),
            origins=h5["origin"][:],
            layout=FeatureLayout(names, channels, dtype),
            features=features,
            feature_present=h5["feature_present"][:] if "feature_present" in h5 else None,
            labels=h5["labels"][:].astype(np.int64) if "labels" in h5 else None,
        )


def smallest_int(labels: np.ndarray, sample_ids: Sequence[str]) -> np.dtype:
    """The smallest signed integer type that holds every label of the shard."""
    if labels.size == 0:
        return LABEL_DTYPES[0]
    low, high = int(labels.min()), int(labels.max())
    for dtype in LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    ids = ", ".join(sample_ids[:3])
    raise DataError(f"labels of samples ({ids}, ...) exceed int32 range [{low}, {high}]")
