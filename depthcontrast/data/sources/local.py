"""The `local` source: a directory of the user's own scans, used in place (never copied)."""

from __future__ import annotations

from pathlib import Path

from depthcontrast.errors import DataError
from depthcontrast.paths import expand_env


def list_local(path: str, pattern: str) -> tuple[Path, list[str]]:
    """Resolve the directory and return it with the sorted relative paths of the files matching `pattern`."""
    root = Path(expand_env(path, what="source.path")).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: local source directory does not exist (config source.path)")
    files = sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())
    if not files:
        raise DataError(f"{root}: no files match glob {pattern!r} (config source.glob)")
    return root, files
