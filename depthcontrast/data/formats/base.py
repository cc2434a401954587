"""Records shared by every format module."""

from __future__ import annotations

import re
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


ORIGINAL_FRAME_STEPS = {"scannet_sens": 10, "redwood": 15, "waymo": 2}
"""The original's frame subsampling per sequence format; every other format keeps every frame."""


def frame_step(fmt: dict[str, Any], format_name: str) -> int:
    """The configured `frame_step`, or the original's default for `format_name` when it is null."""
    step = fmt.get("frame_step")
    return int(step) if step is not None else ORIGINAL_FRAME_STEPS.get(format_name, 1)


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value ('frame2' before 'frame10')."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)
