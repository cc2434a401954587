"""The `builtin` source: real scans shipped inside the package (see docs/BUILTIN_DATA.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_path, sha256_file

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "builtin"
BUILTIN_MANIFEST = BUILTIN_DIR / "MANIFEST.json"
SUBSET_PREFIXES = {"indoor": ("indoor/",), "lidar": ("lidar/",)}


def shipped_files(subset: str) -> list[dict]:
    """The shipped manifest's file entries (path, size, sha256) for one subset, sorted by path."""
    try:
        entries = json.loads(BUILTIN_MANIFEST.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{BUILTIN_MANIFEST}: built-in data manifest unreadable ({exc}); reinstall") from None
    prefixes = SUBSET_PREFIXES[subset]
    return sorted((e for e in entries if e["path"].startswith(prefixes)), key=lambda e: e["path"])


def copy_builtin(subset: str, out_dir: Path) -> list[str]:
    """Copy the subset's shipped files into `out_dir`, verifying each sha256; return relative paths."""
    written = []
    for entry in shipped_files(subset):
        src, dest = BUILTIN_DIR / entry["path"], out_dir / entry["path"]
        if not src.is_file():
            raise DataError(f"{src}: built-in file missing from the installed package; reinstall")
        if dest.is_file() and sha256_file(dest) == entry["sha256"]:
            written.append(entry["path"])
            continue
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
            if sha256_file(tmp) != entry["sha256"]:
                raise DataError(f"{src}: sha256 differs from the built-in manifest; the install is damaged")
        written.append(entry["path"])
    return written
