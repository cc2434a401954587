"""Plain records passed between the data stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One scan / depth frame / LiDAR sweep.

    points:   float32 [P, 3], metres, in the sensor (camera or vehicle) frame.
    features: name -> array with P rows; the names we use are 'rgb' (uint8 [P, 3]) and
              'intensity' (float32 [P, 1]).
    labels:   optional int32 [P] per-point class ids (kept for evaluation, never used in pretraining).
    """

    sample_id: str
    points: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


@dataclass(frozen=True)
class RawFile:
    """One file of a downloaded dataset as listed in MANIFEST.json."""

    path: str  # relative to the manifest's root
    size: int
    sha256: str


@dataclass(frozen=True)
class QuarantineEntry:
    """A sample or file left out of the shards, and why."""

    source: str  # raw file (relative path) the sample came from
    sample_id: str | None  # None when the whole file failed
    reason: str  # one of errors.QUARANTINE_REASONS
    detail: str
