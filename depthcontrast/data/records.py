"""Plain records passed between the data stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNLABELLED = -1
"""The label of points that carry none: every point of a scan without labels in a dataset with labels."""


def no_origin() -> np.ndarray:
    """The origin of a sample stored in its own frame: (0, 0, 0)."""
    return np.zeros(3, dtype=np.float64)


@dataclass
class Sample:
    """One scan / depth frame / LiDAR sweep.

    points:   [P, 3] metres relative to `origin`, in the sensor (camera or vehicle) frame; float32 once
              decoded (readers may return the file's float64 or integer coordinates, see coordinates.py).
    features: name -> array with P rows; the names we use are 'rgb' (uint8 [P, 3]) and
              'intensity' (float32 [P, 1]).
    labels:   optional int32 [P] per-point class ids (kept for evaluation, never used in pretraining).
    origin:   float64 [3]: the absolute coordinates are points + origin (georeferenced clouds are stored
              relative to a local corner so that float32 keeps their precision).
    integer_unit_m: set when the file's integer coordinates were converted with this unit (metres per step).
    """

    sample_id: str
    points: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    origin: np.ndarray = field(default_factory=no_origin)
    integer_unit_m: float | None = None

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


@dataclass(frozen=True)
class RawFile:
    """One file of a downloaded dataset as listed in MANIFEST.json."""

    path: str  # relative to the manifest's root
    size: int
    sha256: str
    mtime_ns: int | None = None  # modification time at download (manifests before 0.2 have none)


@dataclass(frozen=True)
class QuarantineEntry:
    """A sample or file left out of the shards, and why."""

    source: str  # raw file (relative path) the sample came from
    sample_id: str | None  # None when the whole file failed
    reason: str  # one of errors.QUARANTINE_REASONS
    detail: str
