"""Atomic writes and hashing: no reader ever sees a half-written output file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HASH_CHUNK_BYTES = 1 << 20
TEMP_MARKER = ".tmp-"


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success fsync and rename it to `dest`, else delete it.

    Temp names contain TEMP_MARKER so a rerun can sweep leftovers of a killed run.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{TEMP_MARKER}", dir=dest.parent)
    os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs follow the umask like open()
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(dest: str | Path, data: bytes) -> None:
    """Write `data` to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(dest: str | Path, obj: Any) -> None:
    """Write `obj` as stable, indented JSON (sorted keys) atomically."""
    atomic_write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sweep_temp_files(directory: str | Path) -> list[Path]:
    """Delete temp files left by a killed run in `directory`; return what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if p.is_file() and TEMP_MARKER in p.name]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
