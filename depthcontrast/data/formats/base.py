"""Records shared by every format module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Unit:
    """One piece of decoding work.

    source:   path of the raw file relative to the manifest root (goes into quarantine reports)
    path:     absolute path of the file (or folder) to read
    format:   the resolved format name (never 'auto')
    sample_prefix: sample ids start with this (dataset/scene/...)
    options:  format-specific details fixed at planning time (frame ids, intrinsics file, ...)
    """

    source: str
    path: str
    format: str
    sample_prefix: str
    options: dict[str, Any] = field(default_factory=dict)
