"""HDF5 shards: many samples per file, concatenated along the point axis (written by shard_writer.py).

A shard holds `points` (float32 xyz in metres, or integers of `xyz_quantum_m`), optional
`features` [P, C] with `feature_present` uint8 [N, F] (which sample has which feature) and `labels`
[P] (-1 for points of unlabelled scans), `offsets` [N+1], `sample_id` [N] and `origin` float64 [N, 3]
(absolute coordinates = points + origin). `index.json` lists the shards with their sha256 and is
written last, so a directory with an index is complete. Identical samples and parameters give
byte-identical shards and index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hdf5plugin
import numpy as np

from depthcontrast.errors import ConfigError, DataError

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
