"""Waymo Open Dataset: TFRecord segments (needs the official package) or the original's extracted npy.

The original's extractor kept every 2nd frame of each segment and saved all five lidars' first-return
points in the vehicle frame as `<segment>/frame_XXX.npy` (N×3); those files are read with numpy
and need nothing else; as they are already every 2nd frame, `frame_step` defaults to 1 for them.
Segments (`*.tfrecord`) are decoded with `waymo_open_dataset` the same way (the original: every 2nd frame).
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from depthcontrast.data.formats.base import Unit, frame_step
from depthcontrast.data.readers import read_npy
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.errors import DataError, SampleError

WAYMO_PACKAGE = "waymo_open_dataset"
WAYMO_INSTALL_HINT = (
    "decoding Waymo .tfrecord segments needs the official package: "
    "`pip install waymo-open-dataset-tf-2-12-0` (it brings tensorflow 2.12; Python 3.10), "
    "or run the preprocess stage in an environment that has it. Without it, the original's extracted "
    "layout (<segment>/frame_XXX.npy, N×3 xyz) is supported: point the dataset at that folder instead."
)
SEGMENT_PREFIX = "segment-"
TFRECORD_LENGTH = struct.Struct("<Q")
TFRECORD_CRC_BYTES = 4
FRAME_ID_DIGITS = 3  # the original's frame_%03d names


def waymo_available() -> bool:
    """True when `waymo_open_dataset` can be imported."""
    return importlib.util.find_spec(WAYMO_PACKAGE) is not None


def require_waymo(segments: list[str]) -> None:
    """Raise a DataError with what to install when segments are planned without the package."""
    if segments and not waymo_available():
        shown = ", ".join(segments[:3]) + (" ..." if len(segments) > 3 else "")
        raise DataError(f"{len(segments)} Waymo segment(s) ({shown}): {WAYMO_INSTALL_HINT}")


def segment_name(path: str | Path) -> str:
    """The segment id the original named its output folder by ('segment-XYZ.tfrecord' → 'XYZ')."""
    return Path(path).name.split(SEGMENT_PREFIX)[-1].split(".")[0]


def iter_tfrecord_records(path: Path) -> Iterator[bytes]:
    """Payloads of a TFRecord file (length, length CRC, data, data CRC per record; CRCs unchecked).

    A file that ends inside a record raises SampleError('truncated') after the complete records.
    """
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    with handle:
        while header := handle.read(TFRECORD_LENGTH.size):
            start = handle.tell() + TFRECORD_CRC_BYTES
            if len(header) < TFRECORD_LENGTH.size:
                raise SampleError("truncated", f"{path}: file ends inside a record's length field")
            (length,) = TFRECORD_LENGTH.unpack(header)
            if start + length + TFRECORD_CRC_BYTES > size:
                raise SampleError("truncated", f"{path}: file ends inside a record at byte {start}")
            handle.seek(TFRECORD_CRC_BYTES, 1)
            yield handle.read(length)
            handle.seek(TFRECORD_CRC_BYTES, 1)


def _frame_points(record: bytes) -> np.ndarray:
    """All lidars' first-return points of one serialized Frame, vehicle frame, float32 [P, 3]."""
    from waymo_open_dataset import dataset_pb2
    from waymo_open_dataset.utils import frame_utils

    frame = dataset_pb2.Frame()
    frame.ParseFromString(record)
    parsed = frame_utils.parse_range_image_and_camera_projection(frame)
    range_images, projections, top_pose = parsed[0], parsed[1], parsed[-1]  # newer versions add labels
    points, _ = frame_utils.convert_range_image_to_point_cloud(frame, range_images, projections, top_pose)
    return np.concatenate(points, axis=0).astype(np.float32)


def decode_waymo(unit: Unit, fmt: dict) -> list[Sample | QuarantineEntry]:
    """An extracted frame_XXX.npy (one sample) or every `frame_step`-th frame of a segment."""
    path = Path(unit.path)
    if path.suffix.lower() == ".npy":
        return [read_npy(path, unit.sample_prefix)]
    step = frame_step(fmt, "waymo")
    results: list[Sample | QuarantineEntry] = []
    try:
        for index, record in enumerate(iter_tfrecord_records(path)):
            if index % step:
                continue
            sample_id = f"{unit.sample_prefix}/frame_{index:0{FRAME_ID_DIGITS}d}"
            try:
                results.append(Sample(sample_id, _frame_points(record)))
            except Exception as exc:  # protobuf / tensorflow errors on a corrupt record
                detail = f"{path}: frame {index}: {type(exc).__name__}: {exc}"
                results.append(QuarantineEntry(unit.source, sample_id, "unreadable", detail))
    except SampleError as err:
        results.append(QuarantineEntry(unit.source, None, err.reason, err.detail))
    return results
