"""Writing a dataset's shards and index.json (the format is described in shards.py)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from depthcontrast import __version__
from depthcontrast.data.records import Sample
from depthcontrast.data.shard_arrays import (
    FeatureLayout,
    ShardArrays,
    arrays_from_samples,
    feature_columns,
    read_arrays,
    relayout,
    write_arrays,
)
from depthcontrast.data.shards import (
    CHUNK_POINTS,
    COMPRESSIONS,
    HDF5_LIBVER,
    INDEX_NAME,
    QUANTISED_XYZ_NARROW,
    QUANTISED_XYZ_WIDE,
    SCHEMA_VERSION,
    SHARD_GLOB,
    ShardEntry,
    ShardIndex,
    filter_options,
    shard_name,
)
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.io_utils import atomic_path, atomic_write_json, sha256_file, sweep_temp_files

PARTIAL_FEATURE_RULES = ("keep", "drop")


@dataclass
class _DatasetTally:
    """What the samples added so far have: per feature its channels, stored dtype and sample count; labels."""

    channels: dict[str, int] = field(default_factory=dict)
    uint8: dict[str, bool] = field(default_factory=dict)
    feature_samples: Counter = field(default_factory=Counter)
    samples: int = 0
    labelled: int = 0
    shifted: int = 0
    from_integers: int = 0

    def add(self, sample: Sample, columns: dict[str, np.ndarray]) -> None:
        for name, array in columns.items():
            if self.channels.setdefault(name, array.shape[1]) != array.shape[1]:
                raise DataError(
                    f"sample {sample.sample_id}: feature {name!r} has {array.shape[1]} channels, "
                    f"other samples of the dataset {self.channels[name]}"
                )
            self.uint8[name] = self.uint8.get(name, True) and array.dtype == np.uint8
            self.feature_samples[name] += 1
        self.samples += 1
        self.labelled += sample.labels is not None
        self.shifted += bool(np.any(np.asarray(sample.origin) != 0))
        self.from_integers += sample.integer_unit_m is not None

    def layout(self, names: set[str]) -> FeatureLayout:
        """Sorted `names` with their channels; uint8 when every one of them is uint8, else float32."""
        ordered = tuple(sorted(names))
        all_uint8 = all(self.uint8[name] for name in ordered)
        dtype = np.dtype(np.uint8 if all_uint8 else np.float32)
        return FeatureLayout(ordered, tuple(self.channels[name] for name in ordered), dtype)

    def final_names(self, partial_features: str) -> set[str]:
        """keep: every feature any sample has; drop: only those every sample has."""
        if partial_features == "keep":
            return set(self.feature_samples)
        return {name for name, count in self.feature_samples.items() if count == self.samples}


class ShardWriter:
    """Write samples into `out_dir/shard-{k:05d}.h5` and, on a clean close, `out_dir/index.json`.

    Use as a context manager. An exception inside the `with` leaves complete shards but no index.
    A shard's samples are held in memory until it is written in one go (samples_per_shard bounds it).
    Features and labels are decided by the whole dataset, never by file order: `partial_features`
    "keep" stores every feature some sample has (a per-sample presence record marks where it is absent),
    "drop" only those every sample has; when any sample has labels, the others get UNLABELLED. A shard
    written before a later sample changed that set is rewritten at close.
    """

    def __init__(
        self,
        out_dir: Path,
        dataset: str,
        source: str,
        params: dict[str, Any],
        samples_per_shard: int,
        compression: str,
        compression_level: int,
        xyz_quantum_m: float | None,
        chunk_points: int | None = None,
        partial_features: str = "keep",
    ):
        """`chunk_points`: points per chunk; None = CHUNK_POINTS, or contiguous when uncompressed."""
        if compression not in COMPRESSIONS:
            raise ConfigError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
        if samples_per_shard < 1 or (chunk_points is not None and chunk_points < 1):
            raise ConfigError("samples_per_shard and chunk_points must be positive")
        if xyz_quantum_m is not None and not xyz_quantum_m > 0:
            raise ConfigError(f"xyz_quantum_m must be positive, got {xyz_quantum_m}")
        if partial_features not in PARTIAL_FEATURE_RULES:
            raise ConfigError(f"partial_features must be one of {PARTIAL_FEATURE_RULES}, got {partial_features!r}")
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.source = source
        self.params_json = json.dumps(params, sort_keys=True, separators=(",", ":"))
        self.samples_per_shard = samples_per_shard
        self.compression = compression
        self.compression_level = compression_level
        self.xyz_quantum_m = xyz_quantum_m
        if chunk_points is None and compression != "none":
            chunk_points = CHUNK_POINTS
        self.chunk_points = chunk_points
        self.partial_features = partial_features
        self.index: ShardIndex | None = None
        self._pending: list[Sample] = []
        self._entries: list[ShardEntry] = []
        self._written: list[tuple[FeatureLayout, bool]] = []  # each shard's layout and labels-or-not
        self._tally = _DatasetTally()

    def __enter__(self) -> ShardWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(self.out_dir)
        # An index from an earlier run would describe shards we are about to overwrite.
        (self.out_dir / INDEX_NAME).unlink(missing_ok=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pending.clear()

    def add(self, sample: Sample) -> None:
        """Queue one sample; a full shard is written at once."""
        self._check(sample)
        self._pending.append(sample)
        if len(self._pending) == self.samples_per_shard:
            self._flush()

    def close(self) -> ShardIndex:
        """Write the last shard, bring every shard to the dataset's final layout, delete stale shards of an
        earlier run, then write index.json."""
        if self.index is not None:
            return self.index
        if self._pending:
            self._flush()
        tally = self._tally
        layout = tally.layout(tally.final_names(self.partial_features))
        has_labels = tally.labelled > 0
        for k, written in enumerate(self._written):
            if written != (layout, has_labels):
                self._rewrite(k, layout, has_labels)
        index = ShardIndex(
            schema_version=SCHEMA_VERSION,
            dataset=self.dataset,
            source=self.source,
            tool_version=__version__,
            params=json.loads(self.params_json),
            feature_names=list(layout.names),
            feature_channels=list(layout.channels),
            has_labels=has_labels,
            xyz_quantum_m=self.xyz_quantum_m,
            shards=list(self._entries),
            partial_features=self.partial_features,
            feature_samples={name: tally.feature_samples[name] for name in layout.names},
            dropped_features={n: c for n, c in sorted(tally.feature_samples.items()) if n not in layout.names},
            labelled_samples=tally.labelled,
            shifted_samples=tally.shifted,
            integer_samples=tally.from_integers,
        )
        keep = {entry.file for entry in self._entries}
        for stale in self.out_dir.glob(SHARD_GLOB):
            if stale.name not in keep:
                stale.unlink()
        atomic_write_json(self.out_dir / INDEX_NAME, index.to_json())
        self.index = index
        return index

    def _check(self, sample: Sample) -> None:
        """Points are [P > 0, 3], each feature has one row per point and the same channels in every sample."""
        points = np.asarray(sample.points)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise DataError(f"sample {sample.sample_id}: points have shape {points.shape}, expected (P>0, 3)")
        if sample.labels is not None and np.shape(sample.labels) != (sample.num_points,):
            raise DataError(
                f"sample {sample.sample_id}: labels have shape {np.shape(sample.labels)}, "
                f"expected ({sample.num_points},)"
            )
        if np.shape(sample.origin) != (3,):
            raise DataError(f"sample {sample.sample_id}: origin has shape {np.shape(sample.origin)}, expected (3,)")
        self._tally.add(sample, feature_columns(sample))

    def _flush(self) -> None:
        """Write the pending samples as the next shard, laid out for the features and labels they have."""
        samples, self._pending = self._pending, []
        layout = self._tally.layout({name for s in samples for name in s.features})
        has_labels = any(s.labels is not None for s in samples)
        arrays = arrays_from_samples(samples, layout, has_labels, self._points(samples))
        self._entries.append(self._write(len(self._entries), arrays))
        self._written.append((layout, has_labels))

    def _rewrite(self, k: int, layout: FeatureLayout, has_labels: bool) -> None:
        """Shard k again with the dataset's final layout (a later sample brought a feature or labels)."""
        arrays = read_arrays(str(self.out_dir / self._entries[k].file))
        self._entries[k] = self._write(k, relayout(arrays, layout, has_labels))
        self._written[k] = (layout, has_labels)

    def _write(self, k: int, arrays: ShardArrays) -> ShardEntry:
        """Write shard k (temp file, then rename) and return its index entry."""
        name = shard_name(k)
        dest = self.out_dir / name
        with atomic_path(dest) as tmp, h5py.File(tmp, "w", libver=HDF5_LIBVER, track_times=False) as h5:
            write_arrays(h5, arrays, self._dataset)
            if self.xyz_quantum_m is not None:
                h5["points"].attrs["xyz_quantum_m"] = self.xyz_quantum_m
            self._write_attrs(h5, arrays)
        first = self._entries[k - 1].first_sample + self._entries[k - 1].num_samples if k else 0
        return ShardEntry(
            file=name,
            sha256=sha256_file(dest),
            num_samples=len(arrays.sample_ids),
            num_points=int(arrays.offsets[-1]),
            first_sample=first,
            num_bytes=dest.stat().st_size,
        )

    def _write_attrs(self, h5: h5py.File, arrays: ShardArrays) -> None:
        attrs = h5.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        attrs["dataset"] = self.dataset
        attrs["source"] = self.source
        attrs["feature_names"] = list(arrays.layout.names)
        attrs["feature_channels"] = np.array(arrays.layout.channels, dtype=np.int64)
        attrs["params"] = self.params_json
        attrs["tool_version"] = __version__
        attrs["num_samples"] = len(arrays.sample_ids)
        attrs["num_points"] = int(arrays.offsets[-1])

    def _points(self, samples: list[Sample]) -> np.ndarray:
        """The shard's xyz: float32 metres, or round(xyz / quantum) as int16 when the shard fits, else int32."""
        if self.xyz_quantum_m is None:
            return np.concatenate([s.points for s in samples]).astype(np.float32, copy=False)
        widest = QUANTISED_XYZ_WIDE
        steps = np.empty((sum(s.num_points for s in samples), 3), dtype=widest.dtype)
        low, high, start = 0.0, 0.0, 0
        for sample in samples:
            # one sample at a time: the float64 temporaries stay in cache
            rounded = np.rint(np.divide(sample.points, self.xyz_quantum_m, dtype=np.float64))
            sample_low, sample_high = rounded.min(), rounded.max()
            if not (widest.min <= sample_low and sample_high <= widest.max):  # NaN fails too
                raise DataError(
                    f"sample {sample.sample_id}: coordinates out of range for xyz_quantum_m="
                    f"{self.xyz_quantum_m} (non-finite or beyond {widest.max} steps)"
                )
            steps[start : start + sample.num_points] = rounded
            start += sample.num_points
            low, high = min(low, sample_low), max(high, sample_high)
        narrow = QUANTISED_XYZ_NARROW
        return steps.astype(narrow.dtype) if narrow.min <= low and high <= narrow.max else steps

    def _dataset(self, h5: h5py.File, name: str, data: np.ndarray) -> h5py.Dataset:
        """A dataset chunked along the point axis with the configured codec, or contiguous."""
        if self.chunk_points is None:
            return h5.create_dataset(name, data=data, track_times=False)
        chunks = (min(self.chunk_points, data.shape[0]), *data.shape[1:])
        return h5.create_dataset(
            name,
            data=data,
            chunks=chunks,
            track_times=False,
            **filter_options(self.compression, self.compression_level, data.dtype),
        )
