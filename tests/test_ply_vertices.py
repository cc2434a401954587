"""read_ply_vertices: the vertex element of a PLY file, checked against plyfile as the reference."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import plyfile
import pytest
from fixture_writers import truncate, write_ply

from depthcontrast.data.ply_vertices import read_ply_vertices
from depthcontrast.errors import SampleError

RNG = np.random.default_rng(11)
NUM_VERTICES = 150
NUM_FACES = 260
ENCODINGS = {"ascii": (True, "="), "binary_little_endian": (False, "<"), "binary_big_endian": (False, ">")}
HEADER = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n"


def vertex_table(xyz_type: str, count: int = NUM_VERTICES) -> np.ndarray:
    """Vertices with xyz of `xyz_type`, uchar rgb, int label and a NaN in one row."""
    dtype = [("x", xyz_type), ("y", xyz_type), ("z", xyz_type)]
    dtype += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("label", "i4")]
    table = np.empty(count, dtype=dtype)
    for axis in "xyz":
        table[axis] = RNG.uniform(-50, 50, count)
    for name in ("red", "green", "blue"):
        table[name] = RNG.integers(0, 256, count)
    table["label"] = RNG.integers(-1, 40, count)
    if count:
        table["y"][count // 2] = np.nan
    return table


def faces(count: int = NUM_FACES, sides: tuple[int, ...] = (3,)) -> plyfile.PlyElement:
    """A face element: one list property of vertex indices (lengths drawn from `sides`)."""
    rows = np.empty(count, dtype=[("vertex_indices", "O")])
    rows["vertex_indices"] = [RNG.integers(0, NUM_VERTICES, RNG.choice(sides)).astype("i4") for _ in range(count)]
    return plyfile.PlyElement.describe(rows, "face", len_types={"vertex_indices": "u1"})


def camera() -> plyfile.PlyElement:
    """A small element of scalar properties, written before the vertices."""
    rows = np.array([(1.5, 2.5, 7), (3.0, -1.0, 9)], dtype=[("fx", "f8"), ("fy", "f4"), ("id", "i2")])
    return plyfile.PlyElement.describe(rows, "camera")


def write_mesh(path: Path, elements: list[plyfile.PlyElement], encoding: str) -> Path:
    """A PLY file written by plyfile, with file comments and obj_info."""
    text, byte_order = ENCODINGS[encoding]
    data = plyfile.PlyData(
        elements, text=text, byte_order=byte_order, comments=["scanned by a test", "units m"], obj_info=["n/a"]
    )
    data.write(str(path))
    return path


def reference(path: Path) -> np.ndarray:
    return plyfile.PlyData.read(str(path), mmap=False)["vertex"].data


def assert_same_table(ours: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype (names, types, byte order) and the same values field by field (NaN equal to NaN)."""
    assert ours.dtype == expected.dtype
    assert ours.shape == expected.shape
    for name in expected.dtype.names:
        np.testing.assert_array_equal(ours[name], expected[name], strict=True)


def reason_of(path: Path) -> str:
    with pytest.raises(SampleError) as caught:
        read_ply_vertices(path)
    return caught.value.reason


# ------------------------------------------------------------------------------------ same as plyfile
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("xyz_type", ["f4", "f8"])
@pytest.mark.parametrize("layout", ["vertex", "vertex+face", "camera+vertex", "camera+vertex+face"])
def test_vertices_equal_plyfiles(tmp_path, encoding, xyz_type, layout):
    table = vertex_table(xyz_type)
    parts = {"camera": camera, "vertex": lambda: plyfile.PlyElement.describe(table, "vertex"), "face": faces}
    path = write_mesh(tmp_path / "a.ply", [parts[name]() for name in layout.split("+")], encoding)
    ours = read_ply_vertices(path)
    assert_same_table(ours, reference(path))
    assert ours.dtype.names == table.dtype.names
    np.testing.assert_array_equal(ours["label"], table["label"])  # and the values written


@pytest.mark.parametrize("text", [False, True])
def test_fixture_writer_ply_equals_plyfile(tmp_path, text):
    points = RNG.uniform(-5, 5, (200, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, (200, 3), dtype=np.uint8)
    labels = RNG.integers(0, 9, 200).astype(np.int32)
    path = write_ply(tmp_path / "a.ply", points, rgb, labels, label_name="class", text=text)
    ours = read_ply_vertices(path)
    assert_same_table(ours, reference(path))
    np.testing.assert_array_equal(np.stack([ours[a] for a in "xyz"], axis=1), points)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_binary_fields_keep_the_files_byte_order(tmp_path, encoding):
    path = write_mesh(tmp_path / "a.ply", [plyfile.PlyElement.describe(vertex_table("f8"), "vertex")], encoding)
    expected = {"ascii": "=", "binary_little_endian": "<", "binary_big_endian": ">"}[encoding]
    assert read_ply_vertices(path).dtype["x"] == np.dtype(expected + "f8")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_list_element_before_the_vertices_equals_plyfile(tmp_path, encoding):
    """Binary: the plyfile fallback; ascii: our line skipping over variable-length face rows."""
    vertices = plyfile.PlyElement.describe(vertex_table("f4"), "vertex")
    path = write_mesh(tmp_path / "a.ply", [faces(sides=(3, 4, 5)), vertices], encoding)
    assert_same_table(read_ply_vertices(path), reference(path))


def write_vertices_with_lists(path: Path, xyz: np.ndarray, encoding: str) -> Path:
    """Vertices with float xyz and a list of k neighbours in row k, written by hand.

    (plyfile 1.1.5 writes the scalar properties of a row with a list in native byte order, so its
    big-endian files of this layout are wrong.)
    """
    header = f"ply\nformat {encoding} 1.0\nelement vertex {len(xyz)}\nproperty float x\nproperty float y\n"
    header += "property float z\nproperty list uchar int nbrs\nend_header\n"
    rows = []
    for k, point in enumerate(xyz):
        if encoding == "ascii":
            rows.append((" ".join(f"{v:.9g}" for v in point) + f" {k} " + " ".join(map(str, range(k))) + "\n").encode())
        else:
            order = ENCODINGS[encoding][1]
            rows.append(struct.pack(f"{order}3fB{k}i", *point, k, *range(k)))
    path.write_bytes(header.encode() + b"".join(rows))
    return path


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_vertex_element_with_a_list_property_is_read(tmp_path, encoding):
    xyz = RNG.uniform(-1, 1, (4, 3)).astype(np.float32)
    ours = read_ply_vertices(write_vertices_with_lists(tmp_path / "a.ply", xyz, encoding))
    np.testing.assert_array_equal(np.stack([ours[a] for a in "xyz"], axis=1), xyz)
    assert [n.tolist() for n in ours["nbrs"]] == [list(range(k)) for k in range(4)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_zero_vertices_give_an_empty_table_of_the_files_dtype(tmp_path, encoding):
    path = write_mesh(tmp_path / "a.ply", [plyfile.PlyElement.describe(vertex_table("f4", 0), "vertex")], encoding)
    assert_same_table(read_ply_vertices(path), reference(path))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_crlf_header_and_blank_header_lines_are_accepted(tmp_path, encoding):
    """plyfile reads CRLF headers and skips blank header lines; so do we."""
    source = write_mesh(tmp_path / "lf.ply", [plyfile.PlyElement.describe(vertex_table("f4"), "vertex")], encoding)
    data = source.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    head, body = data[:end], data[end:]
    if encoding == "ascii":
        body = body.replace(b"\n", b"\r\n")
    path = tmp_path / "crlf.ply"
    path.write_bytes(head.replace(b"\n", b"\r\n").replace(b"comment units", b"\r\ncomment units") + body)
    assert_same_table(read_ply_vertices(path), reference(source))


def test_face_bytes_are_not_parsed(tmp_path):
    """Garbage in the face rows (same length) changes nothing: only the vertex bytes are read."""
    vertices = plyfile.PlyElement.describe(vertex_table("f4"), "vertex")
    path = write_mesh(tmp_path / "a.ply", [vertices, faces()], "binary_little_endian")
    expected = reference(path)
    data = bytearray(path.read_bytes())
    face_bytes = NUM_FACES * (1 + 3 * 4)
    data[-face_bytes:] = b"\xff" * face_bytes  # every list now claims 255 entries
    path.write_bytes(bytes(data))
    with pytest.raises(plyfile.PlyElementParseError):
        reference(path)
    assert_same_table(read_ply_vertices(path), expected)


# ------------------------------------------------------------------------------------------ errors
def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "a.ply"
    path.write_bytes(b"")
    with pytest.raises(SampleError) as caught:
        read_ply_vertices(path)
    assert caught.value.reason == "empty" and "empty file (0 bytes)" in caught.value.detail


def test_missing_file_is_unreadable(tmp_path):
    assert reason_of(tmp_path / "nothing.ply") == "unreadable"


def test_garbage_bytes_are_unreadable(tmp_path):
    path = tmp_path / "a.ply"
    path.write_bytes(RNG.bytes(4000))
    assert reason_of(path) == "unreadable"


@pytest.mark.parametrize(
    "header",
    [
        "plyx\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n",
        "ply\nelement vertex 1\nproperty float x\nend_header\n",  # no format
        "ply\nformat ascii 2.0\nelement vertex 1\nproperty float x\nend_header\n",
        "ply\nformat binary_middle_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex many\nproperty float x\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex -1\nproperty float x\nend_header\n",
        "ply\nformat ascii 1.0\nproperty float x\nelement vertex 1\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float x\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty list float int idx\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nvertices follow\nend_header\n",
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nelement vertex 1\nend_header\n",
        "ply\nformat ascii 1.0\nelement face 1\nproperty float x\nend_header\n",  # no vertex element
        "ply\nformat ascii 1.0\nelement vertex 1\nend_header\n",  # vertices without properties
        "ply\nformat ascii 1.0\ncomment caf\xe9\nelement vertex 1\nproperty float x\nend_header\n",
    ],
)
def test_malformed_header_is_unreadable(tmp_path, header):
    path = tmp_path / "a.ply"
    path.write_bytes(header.encode("latin-1") + b"1\n")
    assert reason_of(path) == "unreadable"


@pytest.mark.parametrize("cut", [3, 20, HEADER.index("end_header") + 5, len(HEADER) - 1])
def test_file_ending_inside_the_header_is_truncated(tmp_path, cut):
    path = tmp_path / "a.ply"
    path.write_text(HEADER[:cut])
    assert reason_of(path) == "truncated"


def test_header_without_end_in_the_first_64_kib_is_unreadable(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text("ply\nformat ascii 1.0\n" + "comment padding\n" * 5000 + HEADER.split("1.0\n")[1])
    assert reason_of(path) == "unreadable"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_vertices_cut_short_are_truncated(tmp_path, encoding):
    elements = [plyfile.PlyElement.describe(vertex_table("f4"), "vertex")]
    path = truncate(write_mesh(tmp_path / "a.ply", elements, encoding), 300)
    assert reason_of(path) == "truncated"


def test_ascii_mesh_missing_face_rows_is_truncated(tmp_path):
    elements = [plyfile.PlyElement.describe(vertex_table("f4"), "vertex"), faces()]
    path = truncate(write_mesh(tmp_path / "a.ply", elements, "ascii"), 300)
    assert reason_of(path) == "truncated"


@pytest.mark.parametrize("encoding", ["binary_little_endian", "binary_big_endian"])
def test_binary_mesh_is_truncated_when_shorter_than_one_count_byte_per_face(tmp_path, encoding):
    """Face rows are not parsed: the body must hold the vertices and at least each face's count field."""
    elements = [plyfile.PlyElement.describe(vertex_table("f4"), "vertex"), faces()]
    path = write_mesh(tmp_path / "a.ply", elements, encoding)
    expected = reference(path)
    face_bytes = NUM_FACES * (1 + 3 * 4)
    assert_same_table(read_ply_vertices(truncate(path, face_bytes - NUM_FACES)), expected)
    assert reason_of(truncate(path, 1)) == "truncated"


def test_ascii_file_cut_inside_the_last_vertex_row_is_truncated(tmp_path):
    path = tmp_path / "a.ply"
    header = HEADER.replace("property float x", "property float x\nproperty float y")
    path.write_text(header + "1.5")
    assert reason_of(path) == "truncated"
    path.write_text(header + "1.5 2")  # a complete last row needs no line ending
    assert read_ply_vertices(path)["y"].tolist() == [2.0]


@pytest.mark.parametrize("row", ["abc", "1 2", "1e999999x", "\xe9"])
def test_bad_ascii_vertex_row_is_unreadable(tmp_path, row):
    path = tmp_path / "a.ply"
    path.write_bytes((HEADER + row + "\n").encode("latin-1"))
    assert reason_of(path) == "unreadable"


def test_out_of_range_ascii_integer_is_unreadable(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text(HEADER.replace("float x", "uchar x") + "300\n")
    assert reason_of(path) == "unreadable"
