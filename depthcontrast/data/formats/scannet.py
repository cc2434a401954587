"""ScanNet `.sens` RGB-D streams: a compact parser of the documented binary layout.

Header (little-endian): version uint32 (4); sensor name (uint64 length + bytes); colour intrinsics,
colour extrinsics, depth intrinsics, depth extrinsics (4×4 float32 each); colour and depth
compression type (int32); colour width, height, depth width, height (uint32); depth shift (float32,
units per metre); frame count (uint64). Each frame: camera-to-world 4×4 float32, colour and depth
timestamps (uint64), colour and depth byte counts (uint64), then the colour and depth bytes.

Like the original, every `frame_step`-th frame (0, 10, 20, ...) becomes a sample in the CAMERA frame,
back-projected with the depth intrinsics, with colour resized to the depth resolution. (The original
read fx, fy, cx, cy from swapped matrix entries K[1,1], K[0,0], K[1,2], K[0,2]; we use the standard
K[0,0], K[1,1], K[0,2], K[1,2].)
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from depthcontrast.data.depth_images import Intrinsics, decode_image, depth_to_sample
from depthcontrast.data.formats.base import Unit, frame_step
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.errors import SampleError

SENS_VERSION = 4
MAX_SENSOR_NAME_BYTES = 4096
NAME_LENGTH = struct.Struct("<Q")
CALIBRATION = struct.Struct("<64f")  # colour K, colour extrinsic, depth K, depth extrinsic
IMAGE_INFO = struct.Struct("<iiIIIIfQ")
FRAME_INFO = struct.Struct("<16fQQQQ")  # camera_to_world, 2 timestamps, colour bytes, depth bytes

COLOR_RAW, COLOR_PNG, COLOR_JPEG = 0, 1, 2
DEPTH_RAW_USHORT, DEPTH_ZLIB_USHORT = 0, 1
SUPPORTED_COLOR = {COLOR_RAW: "raw", COLOR_PNG: "png", COLOR_JPEG: "jpeg"}
SUPPORTED_DEPTH = {DEPTH_RAW_USHORT: "raw_ushort", DEPTH_ZLIB_USHORT: "zlib_ushort"}
FRAME_ID_DIGITS = 6


@dataclass(frozen=True)
class SensHeader:
    """What a `.sens` file says about itself."""

    sensor_name: str
    depth_intrinsics: Intrinsics
    color_compression: int
    depth_compression: int
    color_size: tuple[int, int]  # width, height
    depth_size: tuple[int, int]
    depth_shift: float
    num_frames: int


def _read_exact(handle: BinaryIO, size: int, path: Path, what: str) -> bytes:
    data = handle.read(size)
    if len(data) < size:
        raise SampleError("truncated", f"{path}: file ends inside the {what}")
    return data


def read_sens_header(handle: BinaryIO, path: Path) -> SensHeader:
    """Parse the header; the handle is left at the first frame."""
    (version,) = struct.unpack("<I", _read_exact(handle, 4, path, "header"))
    if version != SENS_VERSION:
        raise SampleError("unreadable", f"{path}: .sens version {version}, expected {SENS_VERSION}")
    (name_length,) = NAME_LENGTH.unpack(_read_exact(handle, NAME_LENGTH.size, path, "header"))
    if name_length > MAX_SENSOR_NAME_BYTES:
        raise SampleError("unreadable", f"{path}: implausible sensor name length {name_length}")
    name = _read_exact(handle, name_length, path, "header").decode("utf-8", errors="replace")
    calibration = np.array(CALIBRATION.unpack(_read_exact(handle, CALIBRATION.size, path, "header")))
    depth_k = calibration[32:48].reshape(4, 4)
    color_type, depth_type, cw, ch, dw, dh, shift, frames = IMAGE_INFO.unpack(
        _read_exact(handle, IMAGE_INFO.size, path, "header")
    )
    if color_type not in SUPPORTED_COLOR or depth_type not in SUPPORTED_DEPTH:
        supported = f"colour {sorted(SUPPORTED_COLOR)}, depth {sorted(SUPPORTED_DEPTH)}"
        detail = f"{path}: compression colour={color_type}, depth={depth_type} is not one of {supported}"
        raise SampleError("unreadable", detail)
    intrinsics = Intrinsics(
        fx=float(depth_k[0, 0]), fy=float(depth_k[1, 1]), cx=float(depth_k[0, 2]), cy=float(depth_k[1, 2])
    )
    return SensHeader(name, intrinsics, color_type, depth_type, (cw, ch), (dw, dh), float(shift), frames)


def _decode_depth(data: bytes, header: SensHeader, what: str) -> np.ndarray:
    width, height = header.depth_size
    if header.depth_compression == DEPTH_ZLIB_USHORT:
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise SampleError("unreadable", f"{what}: corrupt zlib depth ({exc})") from None
    if len(data) != width * height * 2:
        raise SampleError("unreadable", f"{what}: depth holds {len(data)} bytes, expected {width}×{height}×2")
    return np.frombuffer(data, dtype="<u2").reshape(height, width)


def _decode_color(data: bytes, header: SensHeader, what: str) -> np.ndarray:
    if header.color_compression != COLOR_RAW:
        return decode_image(data, what, "RGB")
    width, height = header.color_size
    if len(data) != width * height * 3:
        detail = f"{what}: raw colour holds {len(data)} bytes, expected {width}×{height}×3"
        raise SampleError("unreadable", detail)
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def _frame_sample(sample_id: str, color: bytes, depth: bytes, header: SensHeader, fmt: dict) -> Sample:
    depth_scale = fmt.get("depth_scale") or header.depth_shift
    return depth_to_sample(
        sample_id,
        _decode_depth(depth, header, sample_id),
        header.depth_intrinsics,
        depth_scale,
        fmt.get("max_depth_m"),
        color=_decode_color(color, header, sample_id) if color else None,
    )


def _truncation_entry(unit: Unit, path: Path, index: int, step: int, num_frames: int) -> QuarantineEntry:
    """The file ends inside frame `index`: name the first kept frame that is lost (None if none is)."""
    lost = -(-index // step) * step
    lost_id = f"{unit.sample_prefix}/{lost:0{FRAME_ID_DIGITS}d}" if lost < num_frames else None
    detail = f"{path}: file ends inside frame {index} of {num_frames}; frames {index}.. are lost"
    return QuarantineEntry(unit.source, lost_id, "truncated", detail)


def decode_sens(unit: Unit, fmt: dict) -> list[Sample | QuarantineEntry]:
    """Samples of every `frame_step`-th frame; a bad frame or a cut-off tail is quarantined."""
    path = Path(unit.path)
    step = frame_step(fmt, "scannet_sens")
    results: list[Sample | QuarantineEntry] = []
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    with handle:
        size = path.stat().st_size
        header = read_sens_header(handle, path)
        for index in range(header.num_frames):
            sample_id = f"{unit.sample_prefix}/{index:0{FRAME_ID_DIGITS}d}"
            info = handle.read(FRAME_INFO.size)
            complete = len(info) == FRAME_INFO.size
            color_bytes, depth_bytes = FRAME_INFO.unpack(info)[-2:] if complete else (0, 0)
            if not complete or handle.tell() + color_bytes + depth_bytes > size:
                results.append(_truncation_entry(unit, path, index, step, header.num_frames))
                break
            if index % step:
                handle.seek(color_bytes + depth_bytes, 1)
                continue
            color = handle.read(color_bytes)
            depth = handle.read(depth_bytes)
            try:
                results.append(_frame_sample(sample_id, color, depth, header, fmt))
            except SampleError as err:
                results.append(QuarantineEntry(unit.source, sample_id, err.reason, err.detail))
    return results
