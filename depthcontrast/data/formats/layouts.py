"""The official on-disk layouts of ScanNet, Redwood, KITTI and Waymo: which raw files matter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from depthcontrast.data.formats.redwood import DEPTH_DIR, RGB_DIR, RGB_SUFFIXES
from depthcontrast.errors import DataError

SCANNET_SCAN_FOLDERS = ("scans", "scans_test", ".")
KITTI_SPLITS = ("training", "testing")

LAYOUT_DESCRIPTIONS = {
    "scannet": "scans/<scene>/<scene>.sens (or <scene>/<scene>.sens) under the root",
    "redwood": "<sequence>.zip files (depth/ and rgb/ inside), or unzipped <sequence>/depth/*.png folders",
    "kitti": "training/velodyne/*.bin (and testing/velodyne/*.bin) under the root",
    "waymo": "*.tfrecord segments, or the original's extracted <segment>/frame_*.npy",
}


def _scannet(root: Path) -> list[Path]:
    found = []
    for folder in SCANNET_SCAN_FOLDERS:
        found += [p for p in (root / folder).glob("*/*.sens") if p.stem == p.parent.name]
    return found


def _redwood(root: Path) -> list[Path]:
    found = list(root.glob("*.zip")) + list(root.glob("*/*.zip"))
    for depth_dir in root.glob(f"*/{DEPTH_DIR}"):
        depth = list(depth_dir.glob("*.png"))
        if depth:
            rgb_dir = depth_dir.parent / RGB_DIR
            found += depth + [p for p in rgb_dir.glob("*") if p.suffix.lower() in RGB_SUFFIXES]
    return found


def _kitti(root: Path) -> list[Path]:
    return [p for split in KITTI_SPLITS for p in (root / split / "velodyne").glob("*.bin")]


def _waymo(root: Path) -> list[Path]:
    return list(root.rglob("*.tfrecord")) + list(root.glob("frame_*.npy")) + list(root.glob("*/frame_*.npy"))


LAYOUT_FINDERS: dict[str, Callable[[Path], list[Path]]] = {
    "scannet": _scannet,
    "redwood": _redwood,
    "kitti": _kitti,
    "waymo": _waymo,
}


def official_layout_files(kind: str, root: Path) -> list[str]:
    """Sorted relative paths of the raw files that matter under `root` in `kind`'s official layout."""
    if kind not in LAYOUT_FINDERS:
        raise DataError(f"no official layout for source kind {kind!r}; known: {sorted(LAYOUT_FINDERS)}")
    root = Path(root)
    expected = LAYOUT_DESCRIPTIONS[kind]
    if not root.is_dir():
        raise DataError(f"{root}: {kind} root does not exist or is not a folder; expected {expected}")
    files = sorted({p.relative_to(root).as_posix() for p in LAYOUT_FINDERS[kind](root) if p.is_file()})
    if not files:
        raise DataError(f"{root}: no {kind} files found; expected {expected}")
    return files
