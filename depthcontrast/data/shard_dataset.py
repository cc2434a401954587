"""Random access to the samples of a shard directory, safe in DataLoader worker processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from torch.utils.data import Dataset

from depthcontrast.data.shards import ShardIndex, read_index
from depthcontrast.errors import DataError
from depthcontrast.io_utils import sha256_file
from depthcontrast.log import progress

# Per-dataset HDF5 chunk cache: holds all the chunks one sample spans (a 50k-point float32 xyz
# sample touches at most 8 chunks of 96 KiB), so each is decompressed once per read.
CHUNK_CACHE_BYTES = 4 << 20


@dataclass
class _OpenShard:
    """One open shard in this process, with its small arrays already in memory."""

    file: h5py.File
    points: h5py.Dataset
    features: h5py.Dataset | None
    labels: h5py.Dataset | None
    offsets: np.ndarray
    sample_ids: list[str]
    origins: np.ndarray
    feature_present: np.ndarray | None
    xyz_quantum: np.float32 | None


def _file_signature(path: Path) -> tuple[int, int, int, int]:
    """What identifies a file's current content cheaply: device, inode, size, mtime."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ShardDataset(Dataset):
    """The samples of `shard_dir` (index.json + shard-*.h5) by global index.

    Each item is a dict of numpy arrays: points float32 [P, 3] in metres relative to origin (float64 [3]),
    features [P, C] with features_present uint8 [F] (1 where this sample has feature f; absent ones
    are 0) when the dataset has any, labels int32 [P] (when it has them; -1 = unlabelled), sample_id,
    index. `absolute_points(item)` gives the original coordinates back.
    Shards are opened lazily, one handle per shard per process; handles from before a fork are
    dropped, never used. With `verify`, a shard's sha256 is checked against the index before its
    first use; a file checked once is not re-hashed while its inode, size and mtime are unchanged,
    so `verify_all()` in the parent spares DataLoader workers the hashing.
    """

    def __init__(self, shard_dir: str | Path, verify: bool = True):
        self.shard_dir = Path(shard_dir)
        self.verify = verify
        self.index: ShardIndex = read_index(self.shard_dir)
        self._first = np.array([s.first_sample for s in self.index.shards], dtype=np.int64)
        self._len = self.index.num_samples
        self._verified: dict[str, tuple[int, int, int, int]] = {}
        self._pid = os.getpid()
        self._open: dict[int, _OpenShard] = {}
        self._sample_ids: list[str] | None = None

    def __len__(self) -> int:
        return self._len

    @property
    def feature_names(self) -> list[str]:
        return list(self.index.feature_names)

    @property
    def has_labels(self) -> bool:
        return self.index.has_labels

    @property
    def sample_ids(self) -> list[str]:
        """Every sample id in global index order (read once from the shards)."""
        if self._sample_ids is None:
            ids: list[str] = []
            for k in range(len(self.index.shards)):
                ids.extend(self._shard(k).sample_ids)
            self._sample_ids = ids
        return self._sample_ids

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -self._len <= i < self._len:
            raise IndexError(f"sample index {i} out of range for {self._len} samples")
        i = int(i) % self._len
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        local = i - int(self._first[k])
        shard = self._shard(k)
        start, stop = int(shard.offsets[local]), int(shard.offsets[local + 1])
        raw = shard.points[start:stop]
        if shard.xyz_quantum is not None:
            raw = np.multiply(raw, shard.xyz_quantum, dtype=np.float32)
        item: dict[str, Any] = {"points": raw}
        if shard.features is not None:
            item["features"] = shard.features[start:stop]
            item["features_present"] = shard.feature_present[local]
        if shard.labels is not None:
            item["labels"] = shard.labels[start:stop].astype(np.int32, copy=False)
        item["sample_id"] = shard.sample_ids[local]
        item["origin"] = shard.origins[local]
        item["index"] = i
        return item

    def feature_samples(self, name: str) -> int:
        """How many samples have feature `name` (0 when the shards do not store it)."""
        return self.index.feature_samples.get(name, 0)

    def verify_all(self) -> None:
        """Check every shard's sha256 against index.json now, behind a progress bar (e.g. in the parent, before
        DataLoader workers fork); a DataError names the first file that differs."""
        for entry in progress(self.index.shards, desc=f"sha256 {self.shard_dir.name}", unit="shard"):
            self._verify(self.shard_dir / entry.file, entry.sha256)

    def close(self) -> None:
        """Close the shard handles this process opened."""
        if self._pid == os.getpid():
            for shard in self._open.values():
                shard.file.close()
        self._open = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def _shard(self, k: int) -> _OpenShard:
        """The open handle of shard k in this process, opening (and verifying) it on first use."""
        if self._pid != os.getpid():
            # Forked: the parent's HDF5 handles must not be used here; dropping this process's
            # copies of them leaves the parent's open files untouched.
            self._open = {}
            self._pid = os.getpid()
        shard = self._open.get(k)
        if shard is None:
            entry = self.index.shards[k]
            path = self.shard_dir / entry.file
            if self.verify:
                self._verify(path, entry.sha256)
            shard = self._open[k] = _open_shard(path)
        return shard

    def _verify(self, path: Path, expected_sha256: str) -> None:
        try:
            signature = _file_signature(path)
        except FileNotFoundError:
            raise DataError(f"{path}: listed in index.json but missing; rerun preprocess") from None
        if self._verified.get(path.name) == signature:
            return
        if sha256_file(path) != expected_sha256:
            raise DataError(
                f"{path}: sha256 differs from {path.parent / 'index.json'}; the index and the shard "
                "file disagree (modified or partly rewritten): rerun preprocess"
            )
        self._verified[path.name] = signature


def _open_shard(path: Path) -> _OpenShard:
    """Open a shard read-only and load its offsets and quantum."""
    try:
        h5 = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, locking=False)
    except FileNotFoundError:
        raise DataError(f"{path}: listed in index.json but missing; rerun preprocess") from None
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 shard ({exc}); rerun preprocess") from None
    try:
        points = h5["points"]
        quantum = points.attrs.get("xyz_quantum_m")
        return _OpenShard(
            file=h5,
            points=points,
            features=h5.get("features"),
            labels=h5.get("labels"),
            offsets=h5["offsets"][:],
            sample_ids=list(h5["sample_id"].asstr()[:]),
            origins=h5["origin"][:],
            feature_present=h5["feature_present"][:] if "feature_present" in h5 else None,
            xyz_quantum=None if quantum is None else np.float32(quantum),
        )
    except KeyError as exc:
        h5.close()
        raise DataError(f"{path}: shard lacks dataset {exc}; rerun preprocess") from None


def absolute_points(item: dict[str, Any]) -> np.ndarray:
    """float64 [P, 3]: an item's points in the coordinates of the raw file (points + origin)."""
    return item["points"].astype(np.float64) + item["origin"]
