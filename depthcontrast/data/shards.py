"""HDF5 shards (DESIGN.md §4): many samples per file, concatenated along the point axis.

A shard holds `points` (float32 xyz in metres, or integers of `xyz_quantum_m`), optional
`features` [P, C] with `feature_present` uint8 [N, F] (which sample has which feature) and `labels`
[P] (-1 for points of unlabelled scans), `offsets` [N+1], `sample_id` [N] and `origin` float64 [N, 3]
(absolute coordinates = points + origin). `index.json` lists the shards with their sha256 and is
written last, so a directory with an index is complete. Identical samples and parameters give
byte-identical shards and index.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import hdf5plugin
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
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.io_utils import atomic_path, atomic_write_json, sha256_file, sweep_temp_files

SCHEMA_VERSION = 2  # 2: feature_present, origin, unlabelled samples (-1)
INDEX_NAME = "index.json"
SHARD_GLOB = "shard-*.h5"
COMPRESSIONS = ("none", "lz4", "zstd", "gzip", "blosc-lz4")
# Points per chunk along the point axis: a 50k-point sample spans 7-8 chunks, so a random read
# decompresses at most ~1.3x what it returns; 8k read fastest of 8k-64k (bench/RESULTS.md, 2026-11-24).
CHUNK_POINTS = 8192
# Format bounds: readers of HDF5 >= 1.10 can open the files, and the chunk index is a fixed array.
HDF5_LIBVER = ("v110", "v110")
GZIP_MAX_LEVEL = 9
# Quantised xyz is int16 when a shard's values fit (+-32.7 m at 1 mm: depth frames), else int32.
QUANTISED_XYZ_NARROW = np.iinfo(np.int16)
QUANTISED_XYZ_WIDE = np.iinfo(np.int32)
PARTIAL_FEATURE_RULES = ("keep", "drop")


def shard_name(k: int) -> str:
    """File name of the k-th shard of a dataset."""
    return f"shard-{k:05d}.h5"


@dataclass(frozen=True)
class ShardEntry:
    """One shard as listed in index.json; `first_sample` is its first global sample index."""

    file: str
    sha256: str
    num_samples: int
    num_points: int
    first_sample: int
    num_bytes: int


@dataclass(frozen=True)
class ShardIndex:
    """A dataset's index.json: what the shards hold and how they were made."""

    schema_version: int
    dataset: str
    source: str
    tool_version: str
    params: dict[str, Any]
    feature_names: list[str]
    feature_channels: list[int]
    has_labels: bool
    xyz_quantum_m: float | None
    shards: list[ShardEntry] = field(default_factory=list)
    partial_features: str = "keep"  # how features only some samples have were treated (keep / drop)
    feature_samples: dict[str, int] = field(default_factory=dict)  # stored feature -> samples that have it
    dropped_features: dict[str, int] = field(default_factory=dict)  # left-out feature -> samples that had it
    labelled_samples: int = 0  # samples with labels (the others' points are -1)
    shifted_samples: int = 0  # samples stored relative to a non-zero origin
    integer_samples: int = 0  # samples whose integer coordinates were converted (format.integer_unit_m)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_points(self) -> int:
        return sum(s.num_points for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        """The index.json document."""
        return {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "source": self.source,
            "tool_version": self.tool_version,
            "params": self.params,
            "feature_names": self.feature_names,
            "feature_channels": self.feature_channels,
            "has_labels": self.has_labels,
            "xyz_quantum_m": self.xyz_quantum_m,
            "partial_features": self.partial_features,
            "feature_samples": self.feature_samples,
            "dropped_features": self.dropped_features,
            "labelled_samples": self.labelled_samples,
            "shifted_samples": self.shifted_samples,
            "integer_samples": self.integer_samples,
            "totals": {"samples": self.num_samples, "points": self.num_points, "bytes": self.num_bytes},
            "shards": [
                {
                    "file": s.file,
                    "sha256": s.sha256,
                    "num_samples": s.num_samples,
                    "num_points": s.num_points,
                    "first_sample": s.first_sample,
                    "bytes": s.num_bytes,
                }
                for s in self.shards
            ],
        }


def read_index(shard_dir: str | Path) -> ShardIndex:
    """Read `shard_dir/index.json`; a missing or malformed index is a DataError."""
    path = Path(shard_dir) / INDEX_NAME
    try:
        doc = json.loads(path.read_text())
        if doc["schema_version"] != SCHEMA_VERSION:
            raise DataError(
                f"{path}: shard schema_version {doc['schema_version']} is not {SCHEMA_VERSION}; "
                "rerun the preprocess stage"
            )
        shards = [
            ShardEntry(
                file=str(s["file"]),
                sha256=str(s["sha256"]),
                num_samples=int(s["num_samples"]),
                num_points=int(s["num_points"]),
                first_sample=int(s["first_sample"]),
                num_bytes=int(s["bytes"]),
            )
            for s in doc["shards"]
        ]
        index = ShardIndex(
            schema_version=doc["schema_version"],
            dataset=str(doc["dataset"]),
            source=str(doc["source"]),
            tool_version=str(doc["tool_version"]),
            params=dict(doc["params"]),
            feature_names=[str(n) for n in doc["feature_names"]],
            feature_channels=[int(c) for c in doc["feature_channels"]],
            has_labels=bool(doc["has_labels"]),
            xyz_quantum_m=doc["xyz_quantum_m"],
            shards=shards,
            partial_features=str(doc["partial_features"]),
            feature_samples={str(k): int(v) for k, v in doc["feature_samples"].items()},
            dropped_features={str(k): int(v) for k, v in doc["dropped_features"].items()},
            labelled_samples=int(doc["labelled_samples"]),
            shifted_samples=int(doc["shifted_samples"]),
            integer_samples=int(doc["integer_samples"]),
        )
    except FileNotFoundError:
        raise DataError(f"{path}: shard index not found; run the preprocess stage first") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a valid shard index ({exc!r}); rerun the preprocess stage") from None
    expected_first = 0
    for entry in index.shards:
        if entry.first_sample != expected_first:
            raise DataError(f"{path}: shard {entry.file} does not start at sample {expected_first}")
        expected_first += entry.num_samples
    return index


def filter_options(compression: str, level: int, dtype: np.dtype) -> dict[str, Any]:
    """h5py create_dataset keywords for a codec; byte-shuffle goes before codecs for multi-byte types."""
    shuffle = dtype.itemsize > 1
    if compression == "none":
        return {}
    if compression == "lz4":
        return {"shuffle": shuffle, **hdf5plugin.LZ4()}
    if compression == "zstd":
        return {"shuffle": shuffle, **hdf5plugin.Zstd(clevel=level)}
    if compression == "gzip":
        return {"shuffle": shuffle, "compression": "gzip", "compression_opts": min(level, GZIP_MAX_LEVEL)}
    if compression == "blosc-lz4":
        mode = hdf5plugin.Blosc.SHUFFLE if shuffle else hdf5plugin.Blosc.NOSHUFFLE
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=level, shuffle=mode))
    raise ConfigError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")


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
