"""Writers of small fixtures in each official on-disk format, shared by the test modules.

Every writer produces a real file in the documented layout (not a mock): a ScanNet .sens stream with
JPEG colour and zlib depth, Redwood zips, KITTI velodyne trees, Waymo TFRecord framing and the
seed's extracted npy, our depth-PNG scenes, PLY, PCD, LAS/LAZ and NPY.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import laspy
import numpy as np
import plyfile
from PIL import Image

SENS_VERSION = 4
SENS_COLOR_JPEG = 2
SENS_DEPTH_ZLIB = 1
LAS_SCALE = 0.001


# ------------------------------------------------------------------------------------------ images
def plane_depth(height: int, width: int, value: int) -> np.ndarray:
    """A fronto-parallel plane: every pixel at depth `value` (uint16 depth units)."""
    return np.full((height, width), value, dtype=np.uint16)


def gradient_rgb(height: int, width: int) -> np.ndarray:
    """An 8-bit RGB image whose red channel encodes the column and green the row."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols % 256, rows % 256, np.full_like(rows, 77)], axis=2).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint16 depth/label image or an 8-bit (RGB) image."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # uint16 → 16-bit greyscale, uint8 → 8-bit
    return buffer.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))
    return path


def truncate(path: Path, drop_bytes: int) -> Path:
    """Cut the last `drop_bytes` bytes off a file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - drop_bytes])
    return path


# ------------------------------------------------------------------------------------- ScanNet .sens
def write_sens(
    path: Path,
    depth_frames: Sequence[np.ndarray],
    color_frames: Sequence[np.ndarray] | None = None,
    depth_intrinsics: tuple[float, float, float, float] = (60.0, 60.0, 15.5, 11.5),
    depth_shift: float = 1000.0,
    sensor_name: str = "StructureSensor",
    corrupt_depth_frames: Sequence[int] = (),
) -> Path:
    """A ScanNet .sens stream (version 4): JPEG colour, zlib-compressed uint16 depth.

    Frames listed in `corrupt_depth_frames` get bytes that are not a zlib stream as their depth.
    """
    depth_h, depth_w = depth_frames[0].shape
    color_h, color_w = color_frames[0].shape[:2] if color_frames is not None else (0, 0)
    fx, fy, cx, cy = depth_intrinsics
    depth_k = np.array([[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    color_k = depth_k * np.float32(color_w / depth_w if color_w else 1.0)
    color_k[2:, :] = depth_k[2:, :]
    eye = np.eye(4, dtype=np.float32)
    name = sensor_name.encode()
    parts = [struct.pack("<IQ", SENS_VERSION, len(name)), name]
    parts += [m.astype("<f4").tobytes() for m in (color_k, eye, depth_k, eye)]
    parts.append(
        struct.pack("<iiIIIIfQ", SENS_COLOR_JPEG, SENS_DEPTH_ZLIB, color_w, color_h, depth_w, depth_h,
                    depth_shift, len(depth_frames))
    )  # fmt: skip
    for index, depth in enumerate(depth_frames):
        color = jpeg_bytes(color_frames[index]) if color_frames is not None else b""
        packed = zlib.compress(depth.astype("<u2").tobytes())
        if index in corrupt_depth_frames:
            packed = b"\x00not zlib" * 8
        pose = np.eye(4, dtype=np.float32)
        pose[0, 3] = index  # a moving camera, to show that poses are not applied
        parts += [
            pose.astype("<f4").tobytes(),
            struct.pack("<QQQQ", index * 33, index * 33, len(color), len(packed)),
        ]
        parts += [color, packed]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


# ------------------------------------------------------------------------------------------ Redwood
def redwood_names(num_frames: int) -> list[tuple[str, str]]:
    """(depth name, rgb name) pairs as in redwood-3dscan: frame number, then differing timestamps."""
    return [
        (f"depth/{i + 1:07d}-{i * 33366:012d}.png", f"rgb/{i + 1:07d}-{i * 33366 + 11:012d}.jpg")
        for i in range(num_frames)
    ]


def write_redwood_zip(
    path: Path, depth_frames: Sequence[np.ndarray], rgb_frames: Sequence[np.ndarray] | None = None
) -> Path:
    """A Redwood sequence zip with depth/ PNGs and optional rgb/ JPEGs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, (depth_name, rgb_name) in enumerate(redwood_names(len(depth_frames))):
            archive.writestr(depth_name, png_bytes(depth_frames[index]))
            if rgb_frames is not None:
                archive.writestr(rgb_name, jpeg_bytes(rgb_frames[index]))
    return path


def write_redwood_folder(
    folder: Path, depth_frames: Sequence[np.ndarray], rgb_frames: Sequence[np.ndarray] | None = None
) -> Path:
    """An unzipped Redwood sequence: folder/depth/*.png (+ folder/rgb/*.jpg)."""
    for index, (depth_name, rgb_name) in enumerate(redwood_names(len(depth_frames))):
        write_png(folder / depth_name, depth_frames[index])
        if rgb_frames is not None:
            (folder / rgb_name).parent.mkdir(parents=True, exist_ok=True)
            (folder / rgb_name).write_bytes(jpeg_bytes(rgb_frames[index]))
    return folder


# ------------------------------------------------------------------------------------ KITTI / Waymo
def kitti_sweep(num_points: int, seed: int = 0) -> np.ndarray:
    """float32 [N, 4] x, y, z, reflectance spread over the KITTI range."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-10, -40, -3], [80, 40, 2], size=(num_points, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (num_points, 1))], axis=1).astype(np.float32)


def write_kitti_bin(path: Path, sweep: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep.astype("<f4").tofile(path)
    return path


def write_kitti_tree(root: Path, training: int, testing: int = 0, num_points: int = 500) -> list[Path]:
    """root/{training,testing}/velodyne/NNNNNN.bin, plus a calib file that is not a sweep."""
    paths = []
    for split, count in (("training", training), ("testing", testing)):
        for index in range(count):
            paths.append(
                write_kitti_bin(root / split / "velodyne" / f"{index:06d}.bin", kitti_sweep(num_points, index))
            )
        if count:
            (root / split / "calib").mkdir(parents=True, exist_ok=True)
            (root / split / "calib" / "000000.txt").write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    return paths


def write_waymo_extracted(root: Path, segments: dict[str, int], num_points: int = 300) -> list[Path]:
    """The seed's extractor output: root/<segment>/frame_%03d.npy (N×3 float64), frames 0, 2, 4, ..."""
    paths = []
    for seg_index, (segment, count) in enumerate(segments.items()):
        for index in range(count):
            points = np.random.default_rng(seg_index * 100 + index).uniform(-75, 75, (num_points, 3))
            path = root / segment / f"frame_{2 * index:03d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, points)
            paths.append(path)
    return paths


def write_tfrecord(path: Path, payloads: Sequence[bytes]) -> Path:
    """TFRecord framing (length, length CRC, data, data CRC); CRCs are zeros."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(struct.pack("<QI", len(p), 0) + p + struct.pack("<I", 0) for p in payloads))
    return path


# --------------------------------------------------------------------------------- depth-PNG scenes
def write_depth_png_scene(
    root: Path,
    scene: str,
    depth_frames: dict[str, np.ndarray],
    intrinsics: tuple[float, float, float, float],
    depth_scale: float = 1000.0,
    color_frames: dict[str, np.ndarray] | None = None,
    label_frames: dict[str, np.ndarray] | None = None,
) -> Path:
    """<root>/<scene>/camera.json + depth/, optional color/ and label/ PNGs (our built-in convention)."""
    folder = root / scene
    height, width = next(iter(depth_frames.values())).shape
    fx, fy, cx, cy = intrinsics
    camera = {
        "width": width, "height": height, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
        "depth_scale": depth_scale, "poses": {frame: np.eye(4).tolist() for frame in depth_frames},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "camera.json").write_text(json.dumps(camera))
    for frame, depth in depth_frames.items():
        write_png(folder / "depth" / f"{frame}.png", depth)
    for subdir, frames in (("color", color_frames), ("label", label_frames)):
        for frame, image in (frames or {}).items():
            write_png(folder / subdir / f"{frame}.png", image)
    return folder


def write_classes(root: Path, classes: dict[int, str]) -> Path:
    path = root / "classes.json"
    path.write_text(json.dumps({str(k): v for k, v in classes.items()}))
    return path


# ------------------------------------------------------------------------------------ point files
def write_ply(
    path: Path,
    points: np.ndarray,
    rgb: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_name: str = "label",
    text: bool = False,
) -> Path:
    """PLY vertices (float32 xyz, uchar red/green/blue, int label) via plyfile."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if labels is not None:
        fields.append((label_name, "i4"))
    vertices = np.empty(len(points), dtype=fields)
    for axis, column in zip("xyz", points.T, strict=True):
        vertices[axis] = column
    if rgb is not None:
        for name, column in zip(("red", "green", "blue"), rgb.T, strict=True):
            vertices[name] = column
    if labels is not None:
        vertices[label_name] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    plyfile.PlyData([plyfile.PlyElement.describe(vertices, "vertex")], text=text).write(str(path))
    return path


def write_pcd(
    path: Path,
    points: np.ndarray,
    rgb: np.ndarray | None = None,
    intensity: np.ndarray | None = None,
    ascii_text: bool = False,
    compressed: bool = False,
) -> Path:
    """PCD v0.7 via open3d's tensor writer (binary, binary_compressed or ascii)."""
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(points.astype(np.float32)))
    if rgb is not None:
        cloud.point.colors = o3d.core.Tensor(rgb.astype(np.uint8))
    if intensity is not None:
        cloud.point.intensity = o3d.core.Tensor(intensity.astype(np.float32).reshape(-1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    o3d.t.io.write_point_cloud(str(path), cloud, write_ascii=ascii_text, compressed=compressed)
    return path


def write_las(
    path: Path,
    points: np.ndarray,
    intensity: np.ndarray,
    classification: np.ndarray,
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Path:
    """LAS 1.2 point format 1 (millimetre scale); a `.laz` suffix writes LAZ through lazrs."""
    header = laspy.LasHeader(point_format=1, version="1.2")
    header.scales = np.array([LAS_SCALE] * 3)
    header.offsets = np.array(offset)
    las = laspy.LasData(header)
    las.x, las.y, las.z = (points[:, i] for i in range(3))
    las.intensity = intensity.astype(np.uint16)
    las.classification = classification.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    las.write(str(path))
    return path


def write_npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path
