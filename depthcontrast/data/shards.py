"""HDF5 shards (DESIGN.md §4): many samples per file, concatenated along the point axis.

A shard holds `points` (float32 xyz in metres, or integers of `xyz_quantum_m`), optional
`features` [P, C] and `labels` [P], `offsets` [N+1] and `sample_id` [N]. `index.json` lists the
shards with their sha256 and is written last, so a directory with an index is complete.
Identical samples and parameters give byte-identical shards and index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from depthcontrast import __version__
from depthcontrast.data.records import Sample
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.io_utils import atomic_path, atomic_write_json, sha256_file, sweep_temp_files

SCHEMA_VERSION = 1
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
LABEL_DTYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


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


@dataclass(frozen=True)
class _FeatureLayout:
    """Feature names (sorted), channels per feature and the stored dtype, fixed by the first sample."""

    names: tuple[str, ...]
    channels: tuple[int, ...]
    dtype: np.dtype


def _feature_columns(sample: Sample) -> dict[str, np.ndarray]:
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


class ShardWriter:
    """Write samples into `out_dir/shard-{k:05d}.h5` and, on a clean close, `out_dir/index.json`.

    Use as a context manager. An exception inside the `with` leaves complete shards but no index.
    A shard's samples are held in memory until it is written in one go (samples_per_shard bounds it).
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
    ):
        """`chunk_points`: points per chunk; None = CHUNK_POINTS, or contiguous when uncompressed."""
        if compression not in COMPRESSIONS:
            raise ConfigError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
        if samples_per_shard < 1 or (chunk_points is not None and chunk_points < 1):
            raise ConfigError("samples_per_shard and chunk_points must be positive")
        if xyz_quantum_m is not None and not xyz_quantum_m > 0:
            raise ConfigError(f"xyz_quantum_m must be positive, got {xyz_quantum_m}")
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
        self.index: ShardIndex | None = None
        self._pending: list[Sample] = []
        self._entries: list[ShardEntry] = []
        self._layout: _FeatureLayout | None = None
        self._has_labels: bool | None = None

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
        """Write the last shard, delete stale shards of an earlier run, then write index.json."""
        if self.index is not None:
            return self.index
        if self._pending:
            self._flush()
        layout = self._layout
        index = ShardIndex(
            schema_version=SCHEMA_VERSION,
            dataset=self.dataset,
            source=self.source,
            tool_version=__version__,
            params=json.loads(self.params_json),
            feature_names=list(layout.names) if layout else [],
            feature_channels=list(layout.channels) if layout else [],
            has_labels=bool(self._has_labels),
            xyz_quantum_m=self.xyz_quantum_m,
            shards=list(self._entries),
        )
        keep = {entry.file for entry in self._entries}
        for stale in self.out_dir.glob(SHARD_GLOB):
            if stale.name not in keep:
                stale.unlink()
        atomic_write_json(self.out_dir / INDEX_NAME, index.to_json())
        self.index = index
        return index

    def _check(self, sample: Sample) -> None:
        """Every sample of a dataset has the same feature names/channels and labels-or-not."""
        points = np.asarray(sample.points)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise DataError(f"sample {sample.sample_id}: points have shape {points.shape}, expected (P>0, 3)")
        columns = _feature_columns(sample)
        names = tuple(sorted(columns))
        channels = tuple(columns[n].shape[1] for n in names)
        if self._layout is None:
            all_uint8 = all(columns[n].dtype == np.uint8 for n in names)
            self._layout = _FeatureLayout(names, channels, np.dtype(np.uint8 if all_uint8 else np.float32))
        elif (names, channels) != (self._layout.names, self._layout.channels):
            raise DataError(
                f"sample {sample.sample_id}: features {dict(zip(names, channels, strict=True))} differ "
                f"from the dataset's {dict(zip(self._layout.names, self._layout.channels, strict=True))}; "
                "all samples of a dataset need the same feature names"
            )
        elif self._layout.dtype == np.uint8 and any(columns[n].dtype != np.uint8 for n in names):
            raise DataError(f"sample {sample.sample_id}: features are not uint8 like the dataset's first")
        has_labels = sample.labels is not None
        if self._has_labels is None:
            self._has_labels = has_labels
        elif has_labels != self._has_labels:
            raise DataError(
                f"sample {sample.sample_id}: {'has' if has_labels else 'lacks'} labels, unlike the "
                "dataset's first sample; all samples need labels or none"
            )
        if has_labels and np.shape(sample.labels) != (sample.num_points,):
            raise DataError(
                f"sample {sample.sample_id}: labels have shape {np.shape(sample.labels)}, "
                f"expected ({sample.num_points},)"
            )

    def _flush(self) -> None:
        """Write the pending samples as the next shard (temp file, then rename) and record it."""
        samples, self._pending = self._pending, []
        name = shard_name(len(self._entries))
        dest = self.out_dir / name
        counts = np.array([s.num_points for s in samples], dtype=np.int64)
        offsets = np.zeros(len(samples) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        with atomic_path(dest) as tmp, h5py.File(tmp, "w", libver=HDF5_LIBVER, track_times=False) as h5:
            self._write_arrays(h5, samples, offsets)
        first = self._entries[-1].first_sample + self._entries[-1].num_samples if self._entries else 0
        self._entries.append(
            ShardEntry(
                file=name,
                sha256=sha256_file(dest),
                num_samples=len(samples),
                num_points=int(offsets[-1]),
                first_sample=first,
                num_bytes=dest.stat().st_size,
            )
        )

    def _write_arrays(self, h5: h5py.File, samples: list[Sample], offsets: np.ndarray) -> None:
        layout = self._layout
        assert layout is not None
        if self.xyz_quantum_m is None:
            points = np.concatenate([s.points for s in samples]).astype(np.float32, copy=False)
            self._dataset(h5, "points", points)
        else:
            points_ds = self._dataset(h5, "points", self._quantise(samples, offsets))
            points_ds.attrs["xyz_quantum_m"] = self.xyz_quantum_m
        if layout.names:
            columns = [_feature_columns(s) for s in samples]
            features = np.concatenate([np.concatenate([c[n] for n in layout.names], axis=1) for c in columns]).astype(
                layout.dtype, copy=False
            )
            self._dataset(h5, "features", features)
        if self._has_labels:
            labels = np.concatenate([np.asarray(s.labels) for s in samples]).astype(np.int64, copy=False)
            self._dataset(h5, "labels", labels.astype(_smallest_int(labels, samples)))
        h5.create_dataset("offsets", data=offsets, track_times=False)
        ids = np.array([s.sample_id.encode() for s in samples], dtype=object)
        h5.create_dataset("sample_id", data=ids, dtype=h5py.string_dtype("utf-8"), track_times=False)
        attrs = h5.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        attrs["dataset"] = self.dataset
        attrs["source"] = self.source
        attrs["feature_names"] = list(layout.names)
        attrs["feature_channels"] = np.array(layout.channels, dtype=np.int64)
        attrs["params"] = self.params_json
        attrs["tool_version"] = __version__
        attrs["num_samples"] = len(samples)
        attrs["num_points"] = int(offsets[-1])

    def _quantise(self, samples: list[Sample], offsets: np.ndarray) -> np.ndarray:
        """round(xyz / quantum) as int16 when the whole shard fits, else int32."""
        assert self.xyz_quantum_m is not None
        widest = QUANTISED_XYZ_WIDE
        steps = np.empty((int(offsets[-1]), 3), dtype=widest.dtype)
        low, high = 0.0, 0.0
        for sample, start, stop in zip(samples, offsets[:-1], offsets[1:], strict=True):
            # one sample at a time: the float64 temporaries stay in cache
            rounded = np.rint(np.divide(sample.points, self.xyz_quantum_m, dtype=np.float64))
            sample_low, sample_high = rounded.min(), rounded.max()
            if not (widest.min <= sample_low and sample_high <= widest.max):  # NaN fails too
                raise DataError(
                    f"sample {sample.sample_id}: coordinates out of range for xyz_quantum_m="
                    f"{self.xyz_quantum_m} (non-finite or beyond {widest.max} steps)"
                )
            steps[start:stop] = rounded
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


def _smallest_int(labels: np.ndarray, samples: list[Sample]) -> np.dtype:
    """The smallest signed integer type that holds every label of the shard."""
    if labels.size == 0:
        return LABEL_DTYPES[0]
    low, high = int(labels.min()), int(labels.max())
    for dtype in LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    ids = ", ".join(s.sample_id for s in samples[:3])
    raise DataError(f"labels of samples ({ids}, ...) exceed int32 range [{low}, {high}]")
