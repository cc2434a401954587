"""Point-cloud readers: one function per file format, each returning a `Sample`.

Every reader checks the file's structure before handing it to its library, so bad data raises a
`SampleError` whose reason (`unreadable`, `truncated`, `wrong_dtype`) comes from what the file says
about itself, never from a library's exception text. Readers keep NaN/inf and empty clouds: the
preprocess stage checks those for every sample alike. Coordinates come back in the file's own type
(float32, float64 or integers); `coordinates.to_float32_metres` makes them float32 metres.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import laspy
import numpy as np

from depthcontrast.data.ply_vertices import read_ply_vertices
from depthcontrast.data.records import Sample
from depthcontrast.errors import SampleError

MAX_HEADER_BYTES = 1 << 16  # PCD headers must end within this many bytes

PLY_COLOUR_PROPERTIES = ("red", "green", "blue")
PLY_LABEL_PROPERTIES = ("label", "class")

PCD_DATA_KEY = "DATA"
PCD_COMMENT_MAGIC = b"# .PCD"
PCD_HEADER_KEYS = {"VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS"}
PCD_COMPRESSED_SIZES = struct.Struct("<II")  # compressed size, uncompressed size

LAS_MAGIC = b"LASF"
LAS_DATA_OFFSET = struct.Struct("<I")  # offset to point data, at byte 96 of every LAS header
LAS_DATA_OFFSET_AT = 96
LAZ_CHUNK_TABLE_OFFSET = struct.Struct("<q")  # first 8 bytes of LAZ point data
LAS_16BIT_COLOUR_SHIFT = 8

NPY_COLUMNS = {3: "xyz", 4: "xyz + intensity", 6: "xyz + rgb"}
NUMERIC_KINDS = "iuf"
NPY_PREAMBLE_BYTES = 8  # magic string + version
NPY_HEADER_LENGTH_V1 = struct.Struct("<H")
NPY_HEADER_LENGTH_V2 = struct.Struct("<I")
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0}  # later versions: the 2.0 reader

KITTI_COLUMNS = 4  # x, y, z, reflectance as float32
KITTI_RECORD_BYTES = KITTI_COLUMNS * 4

RGB_MAX = 255


@contextlib.contextmanager
def unreadable_on_error(path: Path | str, what: str) -> Iterator[None]:
    """Turn any library exception inside the block into SampleError('unreadable')."""
    try:
        yield
    except SampleError:
        raise
    except Exception as exc:  # libraries raise many types for garbage input
        detail = f"{path}: not a readable {what} ({type(exc).__name__}: {exc})"
        raise SampleError("unreadable", detail) from None


def _read_head(path: Path, num_bytes: int = MAX_HEADER_BYTES) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(num_bytes)
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None


def _count_data_lines(path: Path, start: int) -> int:
    """Non-empty text lines after byte offset `start`."""
    with open(path, "rb") as handle:
        handle.seek(start)
        return sum(1 for line in handle if line.strip())


def _to_rgb_uint8(channels: np.ndarray) -> np.ndarray:
    """[P, 3] colour of any numeric type → uint8: floats in [0, 1] are scaled by 255, else clipped."""
    if channels.dtype == np.uint8:
        return np.ascontiguousarray(channels)
    values = channels.astype(np.float64)
    if channels.dtype.kind == "f" and (values.size == 0 or np.nanmax(values) <= 1.0):
        values = values * RGB_MAX
    return np.clip(np.rint(np.nan_to_num(values)), 0, RGB_MAX).astype(np.uint8)


# --------------------------------------------------------------------------------------------- PLY
def read_ply(path: Path, sample_id: str) -> Sample:
    """PLY vertices (faces are never parsed): xyz, optional red/green/blue → 'rgb', optional label/class → labels."""
    path = Path(path)
    vertices = read_ply_vertices(path)
    names = vertices.dtype.names or ()
    for axis in "xyz":
        if axis not in names or vertices.dtype[axis].kind not in NUMERIC_KINDS:
            raise SampleError("wrong_dtype", f"{path}: vertex property {axis!r} missing or not numeric")
    points = np.stack([vertices[axis] for axis in "xyz"], axis=1)
    features = {}
    if all(name in names for name in PLY_COLOUR_PROPERTIES):
        features["rgb"] = _to_rgb_uint8(np.stack([vertices[c] for c in PLY_COLOUR_PROPERTIES], axis=1))
    label_name = next((name for name in PLY_LABEL_PROPERTIES if name in names), None)
    labels = None if label_name is None else vertices[label_name].astype(np.int32)
    return Sample(sample_id, points, features, labels)


# --------------------------------------------------------------------------------------------- PCD
def _check_pcd_structure(path: Path) -> None:
    """Parse the PCD header; raise unreadable / wrong_dtype / truncated as the structure says."""
    head = _read_head(path)
    fields: dict[str, list[str]] = {}
    offset = 0
    for raw_line in head.splitlines(keepends=True):
        offset += len(raw_line)
        line = raw_line.decode("ascii", errors="replace").strip()
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        fields[key.upper()] = values
        if key.upper() == PCD_DATA_KEY:
            break
    else:
        looks_like_pcd = head.startswith(PCD_COMMENT_MAGIC) or (fields and set(fields) <= PCD_HEADER_KEYS)
        if looks_like_pcd and len(head) < MAX_HEADER_BYTES:
            raise SampleError("truncated", f"{path}: file ends inside its PCD header")
        raise SampleError("unreadable", f"{path}: no PCD header (no DATA line in the first bytes)")
    try:
        names = fields["FIELDS"]
        sizes = [int(v) for v in fields["SIZE"]]
        counts = [int(v) for v in fields.get("COUNT", ["1"] * len(sizes))]
        points = (
            int(fields["POINTS"][0])
            if "POINTS" in fields
            else math.prod(int(fields[k][0]) for k in ("WIDTH", "HEIGHT"))
        )
        encoding = fields[PCD_DATA_KEY][0].lower()
    except (KeyError, ValueError, IndexError) as exc:
        raise SampleError("unreadable", f"{path}: malformed PCD header ({exc!r})") from None
    if not {"x", "y", "z"} <= set(names):
        raise SampleError("wrong_dtype", f"{path}: PCD fields {names} have no x, y, z")
    body = path.stat().st_size - offset
    if encoding == "ascii":
        lines = _count_data_lines(path, offset)
        if lines < points:
            raise SampleError("truncated", f"{path}: header declares {points} points, file has {lines} lines")
    elif encoding == "binary":
        needed = points * sum(s * c for s, c in zip(sizes, counts, strict=False))
        if body < needed:
            raise SampleError("truncated", f"{path}: header declares {needed} data bytes, file has {body}")
    elif encoding == "binary_compressed":
        if body < PCD_COMPRESSED_SIZES.size:
            raise SampleError("truncated", f"{path}: compressed PCD ends before its size fields")
        with open(path, "rb") as handle:
            handle.seek(offset)
            compressed, _ = PCD_COMPRESSED_SIZES.unpack(handle.read(PCD_COMPRESSED_SIZES.size))
        if body < PCD_COMPRESSED_SIZES.size + compressed:
            detail = f"{path}: header declares {compressed} compressed bytes; the file ends first"
            raise SampleError("truncated", detail)
    else:
        raise SampleError("unreadable", f"{path}: unknown PCD DATA encoding {encoding!r}")


def read_pcd(path: Path, sample_id: str) -> Sample:
    """PCD via open3d's tensor reader: xyz, colour → 'rgb', intensity → 'intensity'."""
    import open3d as o3d  # heavy import: only workers that read PCD pay for it

    path = Path(path)
    _check_pcd_structure(path)
    with unreadable_on_error(path, "PCD file"):
        cloud = o3d.t.io.read_point_cloud(str(path))
        attributes = {name: cloud.point[name].numpy() for name in cloud.point}
    if "positions" not in attributes:
        raise SampleError("unreadable", f"{path}: open3d could not decode the PCD data")
    points = attributes["positions"].reshape(-1, 3)
    features = {}
    if "colors" in attributes:
        features["rgb"] = _to_rgb_uint8(attributes["colors"].reshape(-1, 3))
    if "intensity" in attributes:
        features["intensity"] = attributes["intensity"].astype(np.float32).reshape(-1, 1)
    return Sample(sample_id, points, features)


# ----------------------------------------------------------------------------------------- LAS/LAZ
def _check_las_structure(path: Path, header: laspy.LasHeader) -> None:
    size = path.stat().st_size
    start = header.offset_to_point_data
    if not header.are_points_compressed:
        needed = start + header.point_count * header.point_format.size
        if size < needed:
            detail = f"{path}: header declares {header.point_count} points ({needed} bytes), file has {size}"
            raise SampleError("truncated", detail)
        return
    # LAZ: point data starts with the offset of the chunk table, which is written at the end
    with open(path, "rb") as handle:
        handle.seek(start)
        raw = handle.read(LAZ_CHUNK_TABLE_OFFSET.size)
    if len(raw) < LAZ_CHUNK_TABLE_OFFSET.size:
        raise SampleError("truncated", f"{path}: LAZ file ends before its point data")
    (table_offset,) = LAZ_CHUNK_TABLE_OFFSET.unpack(raw)
    if table_offset >= size:
        detail = f"{path}: LAZ chunk table should be at byte {table_offset}, file has {size}"
        raise SampleError("truncated", detail)


def read_las(path: Path, sample_id: str) -> Sample:
    """LAS/LAZ via laspy (+lazrs): xyz, intensity → 'intensity', colour → 'rgb', classification → labels.

    x and y are returned (float64) relative to the tile's corner floor(min x), floor(min y), recorded as the
    sample's origin, so float32 keeps millimetre precision for georeferenced coordinates (~10^6 m).
    """
    path = Path(path)
    head = _read_head(path, LAS_DATA_OFFSET_AT + LAS_DATA_OFFSET.size)
    if not head.startswith(LAS_MAGIC):
        raise SampleError("unreadable", f"{path}: no 'LASF' signature; not a LAS/LAZ file")
    if len(head) < LAS_DATA_OFFSET_AT + LAS_DATA_OFFSET.size:
        raise SampleError("truncated", f"{path}: file ends inside its LAS header")
    (data_offset,) = LAS_DATA_OFFSET.unpack_from(head, LAS_DATA_OFFSET_AT)
    if path.stat().st_size < data_offset:
        raise SampleError("truncated", f"{path}: file ends before its point data (byte {data_offset})")
    with unreadable_on_error(path, "LAS/LAZ header"), laspy.open(str(path)) as reader:
        header = reader.header
    _check_las_structure(path, header)
    with unreadable_on_error(path, "LAS/LAZ file"):
        las = laspy.read(str(path))
        xyz = np.asarray(las.xyz, dtype=np.float64)
        dimensions = set(las.point_format.dimension_names)
    origin = np.array([math.floor(header.mins[0]), math.floor(header.mins[1]), 0.0])
    features = {"intensity": np.asarray(las.intensity, dtype=np.float32).reshape(-1, 1)}
    if {"red", "green", "blue"} <= dimensions:
        colour = np.stack([np.asarray(las[c]) for c in ("red", "green", "blue")], axis=1)
        if colour.size and colour.max() > RGB_MAX:  # 16-bit colour, as the LAS spec intends
            colour = colour >> LAS_16BIT_COLOUR_SHIFT
        features["rgb"] = colour.astype(np.uint8)
    labels = np.asarray(las.classification, dtype=np.int32)
    return Sample(sample_id, xyz - origin, features, labels, origin=origin)


# --------------------------------------------------------------------------------------------- NPY
def _npy_header_is_cut(path: Path, version: tuple[int, int]) -> bool:
    """True when the file ends before the header length that its preamble declares."""
    length_field = NPY_HEADER_LENGTH_V1 if version == (1, 0) else NPY_HEADER_LENGTH_V2
    with open(path, "rb") as handle:
        handle.seek(NPY_PREAMBLE_BYTES)
        raw = handle.read(length_field.size)
    if len(raw) < length_field.size:
        return True
    (length,) = length_field.unpack(raw)
    return path.stat().st_size < NPY_PREAMBLE_BYTES + length_field.size + length


def read_npy(path: Path, sample_id: str) -> Sample:
    """A numeric N×3 (xyz), N×4 (xyz + intensity) or N×6 (xyz + rgb, [0, 1] floats or 0–255) array."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
            except ValueError as exc:
                raise SampleError("unreadable", f"{path}: not a .npy file ({exc})") from None
            try:
                read_header = NPY_HEADER_READERS.get(version, np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)
            except (ValueError, SyntaxError, EOFError) as exc:
                reason = "truncated" if _npy_header_is_cut(path, version) else "unreadable"
                raise SampleError(reason, f"{path}: bad .npy header ({exc})") from None
            data_start = handle.tell()
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    if dtype.kind not in NUMERIC_KINDS:
        raise SampleError("wrong_dtype", f"{path}: array of dtype {dtype} cannot hold points")
    if len(shape) != 2 or shape[1] not in NPY_COLUMNS:
        raise SampleError(
            "wrong_dtype", f"{path}: array of shape {shape}; expected N×C with C in {sorted(NPY_COLUMNS)}"
        )
    needed = data_start + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        detail = f"{path}: header declares shape {shape} ({needed} bytes), file has {size}"
        raise SampleError("truncated", detail)
    with unreadable_on_error(path, ".npy file"):
        array = np.load(path, allow_pickle=False)
    points = array[:, :3]
    features = {}
    if shape[1] == 4:
        features["intensity"] = array[:, 3:4].astype(np.float32)
    elif shape[1] == 6:
        features["rgb"] = _to_rgb_uint8(array[:, 3:6])
    return Sample(sample_id, points, features)


# --------------------------------------------------------------------------------------- KITTI bin
def read_kitti_bin(path: Path, sample_id: str) -> Sample:
    """A KITTI velodyne sweep: float32 records of x, y, z, reflectance → xyz + 'intensity'."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    if size % KITTI_RECORD_BYTES:
        raise SampleError(
            "truncated", f"{path}: {size} bytes is not a whole number of {KITTI_RECORD_BYTES}-byte points"
        )
    with unreadable_on_error(path, "KITTI .bin file"):
        records = np.fromfile(path, dtype="<f4").reshape(-1, KITTI_COLUMNS)
    intensity = records[:, 3:4].astype(np.float32)
    return Sample(sample_id, records[:, :3].astype(np.float32), {"intensity": intensity})


FILE_READERS: dict[str, Callable[[Path, str], Sample]] = {
    "ply": read_ply,
    "pcd": read_pcd,
    "las": read_las,
    "npy": read_npy,
    "kitti_bin": read_kitti_bin,
}
