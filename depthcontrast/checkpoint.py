"""Training checkpoints: written atomically, loaded with validation and clear errors.

A checkpoint holds everything needed to continue a run bit-for-bit where it stopped: model (both
encoders and the queues, which are buffers), optimizer, scheduler, epoch/step, the RNG states of every
rank, the resolved config and the package version (bf16 autocast needs no loss scaler; files written with a
`scaler` entry, always None, load as before). Only plain types and tensors are
stored, so files load with `weights_only=True` (no arbitrary pickle).
"""

from __future__ import annotations

import io
import logging
import pickle
import pickletools
import random
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from depthcontrast import __version__
from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_path

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "depthcontrast-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model", "optimizer", "epoch", "step", "config")
# what a file to torch.load holds, told without unpickling it (saved_file_kind)
PICKLED, DAMAGED, NOT_PICKLED = "pickled", "damaged", "not pickled"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip archive (torch >= 1.6)
LEGACY_PICKLES = 5  # torch.save's legacy format: magic number, protocol, sys info, the object, storage keys


class CheckpointError(DataError):
    """A checkpoint file is missing, truncated, corrupt or not ours."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (+ format/version stamps) to `path` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "package_version": __version__,
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        if saved_file_kind(path) == NOT_PICKLED:
            raise CheckpointError(f"{path}: not a checkpoint (neither a torch.save file nor a pickle)") from None
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupt ({type(exc).__name__}: {str(exc).split('. ')[0]}); "
            "delete it to start over, or copy an earlier checkpoint-ep*.pth to last.pth"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a depthcontrast-pipeline checkpoint (a checkpoint of the original DepthContrast code: use "
            "`depthcontrast import-original`)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; it was not written completely")
    if state["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state['version']} is newer than this package understands "
            f"({CHECKPOINT_VERSION}); upgrade depthcontrast-pipeline"
        )
    return state


def saved_file_kind(path: Path) -> str:
    """What `path` holds, read without unpickling anything: PICKLED (a torch.save archive or a pickle whose opcodes
    parse to the end), DAMAGED (it starts as one but breaks off) or NOT_PICKLED (text, random bytes, ...)."""
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
        if head == ZIP_MAGIC:
            return _archive_kind(path)
        if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
            return NOT_PICKLED
        handle.seek(0)
        stream = _ClampedReader(handle, path.stat().st_size)
        first = _pickle_args(stream)
        if first is None:
            return DAMAGED
        legacy = torch.serialization.MAGIC_NUMBER in first
        rest = [_pickle_args(stream) for _ in range(LEGACY_PICKLES - 1)] if legacy else []
        return DAMAGED if None in rest else PICKLED


class _ClampedReader:
    """A file for pickletools: a read never asks for more than is left, nor a line for more than MAX_LINE (the
    lengths come from the bytes, and random bytes give lengths of gigabytes)."""

    MAX_LINE = 1 << 20

    def __init__(self, handle: IO[bytes], size: int):
        self.handle, self.size = handle, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.handle.tell()
        return self.handle.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.handle.readline(self.MAX_LINE)

    def tell(self) -> int:
        return self.handle.tell()


def _archive_kind(path: Path) -> str:
    """A zip archive is PICKLED when it holds a torch.save data.pkl that parses, DAMAGED when the zip breaks."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.rpartition("/")[2] == "data.pkl"]
            if not names:
                return NOT_PICKLED
            return PICKLED if _pickle_args(io.BytesIO(archive.read(names[0]))) is not None else DAMAGED
    except (zipfile.BadZipFile, EOFError, OSError):
        return DAMAGED


def _pickle_args(stream: IO[bytes] | _ClampedReader) -> list[Any] | None:
    """The arguments of the opcodes of the pickle at `stream`'s position, read up to its STOP (nothing is
    unpickled); None when the bytes there are no complete pickle."""
    try:
        return [arg for _, arg, _ in pickletools.genops(stream)]
    except (ValueError, OverflowError):  # an unknown opcode, a short argument, or the end before STOP
        return None


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy's global generator and torch (CPU and current CUDA device)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state; the state's tensors may have been loaded onto any device."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
