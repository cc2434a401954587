"""Redwood 3D-scan RGB-D sequences: one `.zip` (or an unzipped folder) per sequence.

A sequence holds `depth/<frame>-<timestamp>.png` (640×480, millimetres) and optionally
`rgb/<frame>-<timestamp>.jpg`; depth and colour are paired by the frame number before the '-', as
the original did. Every `frame_step`-th frame (the original: 15) is back-projected with the fixed intrinsics
fx = fy = 525, cx = 319.5, cy = 239.5 unless the config gives others.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from depthcontrast.data.depth_images import (
    DEFAULT_DEPTH_SCALE,
    REDWOOD_INTRINSICS,
    Intrinsics,
    decode_image,
    depth_to_sample,
)
from depthcontrast.data.formats.base import Unit, frame_step, natural_key
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.errors import SampleError

DEPTH_DIR = "depth"
RGB_DIR = "rgb"
DEPTH_SUFFIXES = (".png",)
RGB_SUFFIXES = (".jpg", ".jpeg", ".png")
FRAME_KEY_SEPARATOR = "-"
REDWOOD_DEPTH_SHAPE = (480, 640)  # (height, width) the fixed intrinsics belong to
ZIP_LOCAL_HEADER_MAGIC = b"PK\x03\x04"


def frame_key(name: str) -> str:
    """The frame number of a Redwood image name ('0000016-000000533867.png' → '0000016')."""
    return PurePosixPath(name).stem.split(FRAME_KEY_SEPARATOR)[0]


def is_depth_member(name: str) -> bool:
    """True for a `depth/*.png` image of a sequence."""
    path = PurePosixPath(name)
    return path.parent.name == DEPTH_DIR and path.suffix.lower() in DEPTH_SUFFIXES


def is_rgb_member(name: str) -> bool:
    """True for an `rgb/*.jpg|png` image of a sequence."""
    path = PurePosixPath(name)
    return path.parent.name == RGB_DIR and path.suffix.lower() in RGB_SUFFIXES


def select_frames(names: list[str], step: int) -> list[tuple[str, str, str | None]]:
    """(frame key, depth name, rgb name or None) of every `step`-th depth frame, in frame order."""
    depth: dict[str, str] = {}
    rgb: dict[str, str] = {}
    for name in sorted(names):
        if is_depth_member(name):
            depth.setdefault(frame_key(name), name)
        elif is_rgb_member(name):
            rgb.setdefault(frame_key(name), name)
    keys = sorted(depth, key=natural_key)[::step]
    return [(key, depth[key], rgb.get(key)) for key in keys]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    except zipfile.BadZipFile:
        with open(path, "rb") as handle:
            starts_like_zip = handle.read(len(ZIP_LOCAL_HEADER_MAGIC)) == ZIP_LOCAL_HEADER_MAGIC
        if starts_like_zip:  # entries are there but the central directory at the end is not
            raise SampleError("truncated", f"{path}: zip has no central directory (cut short)") from None
        raise SampleError("unreadable", f"{path}: not a zip archive") from None


def _frame_sample(
    sample_id: str, read: Callable[[str], bytes], depth_name: str, rgb_name: str | None, fmt: dict
) -> Sample:
    depth = decode_image(read(depth_name), f"{sample_id} ({depth_name})")
    intrinsics = REDWOOD_INTRINSICS
    if fmt.get("intrinsics") is not None:
        intrinsics = Intrinsics(**{k: float(fmt["intrinsics"][k]) for k in ("fx", "fy", "cx", "cy")})
    elif depth.shape != REDWOOD_DEPTH_SHAPE:
        detail = f"{sample_id}: depth is {depth.shape}; Redwood intrinsics are for {REDWOOD_DEPTH_SHAPE}"
        raise SampleError("unreadable", f"{detail} (set format.intrinsics for other sizes)")
    color = decode_image(read(rgb_name), f"{sample_id} ({rgb_name})", "RGB") if rgb_name else None
    depth_scale = fmt.get("depth_scale") or DEFAULT_DEPTH_SCALE
    return depth_to_sample(sample_id, depth, intrinsics, depth_scale, fmt.get("max_depth_m"), color=color)


def _read_member(archive: zipfile.ZipFile, path: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise SampleError("unreadable", f"{path}!{name}: corrupt zip entry ({exc})") from None

    return read


def _read_file(folder: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        try:
            return (folder / name).read_bytes()
        except OSError as exc:
            raise SampleError("unreadable", f"{folder / name}: cannot open ({exc.strerror or exc})") from None

    return read


def decode_redwood(unit: Unit, fmt: dict) -> list[Sample | QuarantineEntry]:
    """Samples of one sequence: a zip (`unit.path`) or a folder whose files are `unit.options['files']`."""
    path = Path(unit.path)
    step = frame_step(fmt, "redwood")
    if path.suffix.lower() == ".zip":
        archive = _open_zip(path)
        names, read = archive.namelist(), _read_member(archive, path)
    else:
        archive = None
        names, read = list(unit.options["files"]), _read_file(path)
    results: list[Sample | QuarantineEntry] = []
    try:
        for key, depth_name, rgb_name in select_frames(names, step):
            sample_id = f"{unit.sample_prefix}/{key}"
            try:
                results.append(_frame_sample(sample_id, read, depth_name, rgb_name, fmt))
            except SampleError as err:
                results.append(QuarantineEntry(unit.source, sample_id, err.reason, err.detail))
    finally:
        if archive is not None:
            archive.close()
    return results
