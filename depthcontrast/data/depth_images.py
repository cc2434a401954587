"""Depth images: decoding PNG/JPEG frames and back-projecting depth into camera-frame points."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from depthcontrast.data.readers import unreadable_on_error
from depthcontrast.data.records import Sample
from depthcontrast.errors import SampleError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of a depth camera, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float


REDWOOD_INTRINSICS = Intrinsics(fx=525.0, fy=525.0, cx=319.5, cy=239.5)
DEFAULT_DEPTH_SCALE = 1000.0  # depth PNG units per metre (millimetres)


def decode_image(data: bytes, what: str, mode: str | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes with Pillow (converted to `mode`, e.g. 'RGB', when given).

    A PNG without its IEND chunk is reported as truncated.
    """
    if data.startswith(PNG_SIGNATURE) and not data.rstrip(b"\x00").endswith(PNG_IEND_CHUNK):
        raise SampleError("truncated", f"{what}: PNG ends before its IEND chunk")
    with unreadable_on_error(what, "image"), Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image if mode is None else image.convert(mode))


def read_image(path: Path, mode: str | None = None) -> np.ndarray:
    """Decode an image file (see decode_image)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    return decode_image(data, str(path), mode)


def _colour_at_depth_resolution(color: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """[H, W, 3] uint8 colour, resized (bilinear, as the original did) to the depth image's size."""
    if color.dtype != np.uint8 or color.ndim not in (2, 3):
        raise SampleError("wrong_dtype", f"{what}: colour image of dtype {color.dtype}, shape {color.shape}")
    if color.ndim == 2:
        color = np.repeat(color[:, :, None], 3, axis=2)
    color = color[:, :, :3]
    if color.shape[:2] != (height, width):
        color = np.asarray(Image.fromarray(color).resize((width, height), Image.Resampling.BILINEAR))
    return color


def depth_to_sample(
    sample_id: str,
    depth: np.ndarray,
    intrinsics: Intrinsics,
    depth_scale: float,
    max_depth_m: float | None = None,
    color: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Sample:
    """Back-project a depth image into camera-frame points (pixels with depth 0 are no return).

    z = d / depth_scale, x = (u − cx)·z / fx, y = (v − cy)·z / fy; points in row-major pixel order.
    `color` (any size, resized to the depth's) becomes 'rgb'; `labels` ([H, W] ints) the labels.
    """
    if depth.ndim != 2 or depth.dtype.kind not in "ui":
        detail = f"{sample_id}: depth image of dtype {depth.dtype}, shape {depth.shape}"
        raise SampleError("wrong_dtype", detail)
    height, width = depth.shape
    z_image = depth.astype(np.float32) / np.float32(depth_scale)
    valid = depth > 0
    if max_depth_m is not None:
        valid &= z_image <= max_depth_m
    rows, cols = np.nonzero(valid)
    z = z_image[rows, cols]
    x = (cols.astype(np.float32) - np.float32(intrinsics.cx)) * z / np.float32(intrinsics.fx)
    y = (rows.astype(np.float32) - np.float32(intrinsics.cy)) * z / np.float32(intrinsics.fy)
    features = {}
    if color is not None:
        features["rgb"] = _colour_at_depth_resolution(color, height, width, sample_id)[rows, cols]
    point_labels = None
    if labels is not None:
        if labels.shape != depth.shape or labels.dtype.kind not in "ui":
            detail = f"{sample_id}: label image {labels.dtype} {labels.shape} ≠ depth {depth.shape}"
            raise SampleError("wrong_dtype", detail)
        point_labels = labels[rows, cols].astype(np.int32)
    return Sample(sample_id, np.stack([x, y, z], axis=1), features, point_labels)
