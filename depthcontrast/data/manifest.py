"""results/raw/{dataset}/MANIFEST.json: which raw files a dataset has, with sizes and sha256."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from depthcontrast import __version__
from depthcontrast.data.records import RawFile
from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_write_json, sha256_file

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """The download stage's output. `root` is where `files[*].path` are relative to."""

    dataset: str
    source_kind: str
    root: str
    files: list[RawFile]
    extra: dict[str, Any] = field(default_factory=dict)

    def abs_path(self, raw: RawFile) -> Path:
        return Path(self.root) / raw.path


def describe_files(root: Path, relative_paths: list[str]) -> list[RawFile]:
    """RawFile records (size, sha256, modification time) for files under `root`, sorted by path."""
    records = []
    for rel in sorted(relative_paths):
        path = root / rel
        stat = path.stat()
        records.append(RawFile(path=rel, size=stat.st_size, sha256=sha256_file(path), mtime_ns=stat.st_mtime_ns))
    return records


def write_manifest(manifest: Manifest, dest: Path) -> None:
    """Write MANIFEST.json atomically."""
    atomic_write_json(
        dest,
        {
            "manifest_version": MANIFEST_VERSION,
            "tool_version": __version__,
            "dataset": manifest.dataset,
            "source_kind": manifest.source_kind,
            "root": manifest.root,
            "num_files": len(manifest.files),
            "total_bytes": sum(f.size for f in manifest.files),
            "files": [asdict(f) for f in manifest.files],
            "extra": manifest.extra,
        },
    )


def read_manifest(path: str | Path) -> Manifest:
    """Read a MANIFEST.json; a relative `root` is resolved against the manifest's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        files = [RawFile(**entry) for entry in data["files"]]
        root = Path(data["root"])
        if not root.is_absolute():
            root = (path.parent / root).resolve()
        return Manifest(data["dataset"], data["source_kind"], str(root), files, data.get("extra", {}))
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found; run the download stage first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a valid manifest ({exc}); rerun the download stage") from None
