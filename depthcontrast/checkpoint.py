"""Training checkpoints: written atomically, loaded with validation and clear errors.

A checkpoint holds everything needed to continue a run bit-for-bit where it stopped: model (both
encoders and the queues, which are buffers), optimizer, scheduler, AMP scaler, epoch/step, the RNG
states of every rank, the resolved config and the package version. Only plain types and tensors are
stored, so files load with `weights_only=True` (no arbitrary pickle).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthcontrast import __version__
from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_path

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "depthcontrast-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model", "optimizer", "epoch", "step", "config")


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
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupt ({type(exc).__name__}: {str(exc).split('. ')[0]}); "
            "delete it to start over, or copy an earlier checkpoint-ep*.pth to last.pth"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a depthcontrast-pipeline checkpoint (seed checkpoints: use the model-zoo import)"
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
