"""Aerial LiDAR tiles and crops of them as LAZ files: reading, re-centring, writing byte-reproducibly.

Shared by the built-in LiDAR crops (scripts/make_builtin_data.py) and the corpus's extra crops
(data/sources/corpus.py), which re-assembles each tile from the built-in crops (`builtin_tile`).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np

from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_path

MIN_CROP_POINTS = 3000
MIN_GROUND_POINTS = 50  # fewer ground-class points than this: z origin from a low percentile instead
LOW_Z_PERCENTILE = 1.0
ASPRS_UNCLASSIFIED, ASPRS_GROUND = 1, 2
LAS_VERSION, LAS_POINT_FORMAT = "1.4", 6  # format 6: 8-bit classification (append-bug uses code 65)
LAS_SCALE_M = 0.001
LAS_CREATION_DATE = datetime.date(2026, 1, 1)
LAS_SOFTWARE = "depthcontrast make_builtin_data"


@dataclass
class Cloud:
    """A LiDAR tile: xyz float64 [N, 3], intensity uint16 [N] or None, ASPRS classes uint8 [N]."""

    xyz: np.ndarray
    intensity: np.ndarray | None
    classification: np.ndarray


def read_las(path: Path) -> Cloud:
    """Read a LAS/LAZ tile's xyz, intensity and classification."""
    try:
        las = laspy.read(path)
    except (laspy.LaspyException, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable LAS/LAZ ({exc})") from None
    xyz = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1)
    return Cloud(xyz, np.asarray(las.intensity, dtype=np.uint16), np.asarray(las.classification, np.uint8))


def ground_z(xyz: np.ndarray, classes: np.ndarray) -> float:
    """A crop's z origin: the median z of its ground-class points, or a low percentile of z with too few."""
    ground = xyz[classes == ASPRS_GROUND, 2]
    if ground.size >= MIN_GROUND_POINTS:
        return float(np.median(ground))
    return float(np.percentile(xyz[:, 2], LOW_Z_PERCENTILE))


def write_laz(
    dest: Path, xyz: np.ndarray, intensity: np.ndarray | None, classes: np.ndarray, software: str = LAS_SOFTWARE
) -> None:
    """Write a LAS 1.4 / point format 6 LAZ with fixed header metadata (byte-reproducible)."""
    header = laspy.LasHeader(version=LAS_VERSION, point_format=LAS_POINT_FORMAT)
    header.scales = np.full(3, LAS_SCALE_M)
    header.offsets = np.zeros(3)
    header.creation_date = LAS_CREATION_DATE
    header.generating_software = software
    header.system_identifier = software
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if intensity is not None:
        las.intensity = intensity
    las.classification = classes
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        las.write(handle, do_compress=True)


def builtin_tile(builtin_dir: Path, name: str) -> tuple[Cloud, float]:
    """Tile `name` of the built-in LiDAR data, re-assembled from its crops (their origins added back), and the
    built-in crop size of that tile in metres. Parts of the tile too sparse to make a built-in crop are missing."""
    manifest = builtin_dir / "MANIFEST.json"
    try:
        tile = json.loads(manifest.read_text())["extra"]["groups"]["lidar"]["tiles"][name]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{manifest}: no built-in LiDAR tile {name!r} ({exc!r})") from None
    parts = [read_las(builtin_dir / crop["file"]) for crop in tile["crops"]]
    origins = [np.array(crop["origin_subtracted"]) for crop in tile["crops"]]
    xyz = np.concatenate([part.xyz + origin for part, origin in zip(parts, origins, strict=True)])
    intensity = np.concatenate([part.intensity for part in parts])
    classes = np.concatenate([part.classification for part in parts])
    return Cloud(xyz, intensity if tile["has_intensity"] else None, classes), float(tile["crop_size_m"])
