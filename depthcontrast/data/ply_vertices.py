"""Read the `vertex` element of a PLY file, and nothing else.

`plyfile.PlyData.read` parses every element, faces included, row by row in Python; for a scanned
mesh that is seconds spent on data we throw away. Here we parse the header ourselves, then:

- binary: seek to the vertex element (the elements before it have fixed-size rows) and read it with
  one `np.fromfile` in the file's byte order; nothing after the vertex element is read;
- ascii: skip the rows of the elements before it, parse the vertex rows with `np.loadtxt`.

Fallback to plyfile (rare): a binary file with a list property before the vertex element (its byte
offset depends on every row), or a vertex element that itself has a list property (no fixed dtype).

Bad files raise `SampleError` whose reason comes from the file's structure: `empty` (0 bytes),
`unreadable` (no 'ply' magic, malformed header, no vertex element, bad values), `truncated` (the file
ends inside the header or before the body the header declares). The reasons and details are those of
the structure check that `readers.read_ply` used before this module. What "declares" means without
parsing the rows after the vertices: a binary body must hold every element's minimum size (a list
counted by its count field alone, checked with one stat); an ascii body must hold a line per row of
every element (counted, not parsed).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plyfile

from depthcontrast.errors import SampleError

__all__ = ["read_ply_vertices"]

MAX_HEADER_BYTES = 1 << 16  # the header must end within this many bytes
PLY_MAGIC = b"ply"
PLY_NEWLINES = (b"\r\n", b"\n", b"\r")  # the one after 'ply' is the header's line ending
PLY_VERSION = "1.0"
VERTEX = "vertex"
BYTE_ORDERS = {"ascii": "=", "binary_little_endian": "<", "binary_big_endian": ">"}
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
EARLY_EOF = "early end-of-file"  # plyfile's message for a body that ends too soon


@dataclass(frozen=True)
class PlyProperty:
    """One property of an element; `count_type` is set (numpy code) for a list property."""

    name: str
    value_type: str  # numpy code, e.g. 'f4'
    count_type: str | None = None

    @property
    def is_list(self) -> bool:
        return self.count_type is not None

    def min_bytes(self) -> int:
        """Bytes of the property in one binary row: its value, or a list's count field alone."""
        return np.dtype(self.count_type or self.value_type).itemsize


@dataclass(frozen=True)
class PlyElement:
    """An element of the header: name, row count and properties, in file order."""

    name: str
    count: int
    properties: tuple[PlyProperty, ...]

    @property
    def has_lists(self) -> bool:
        return any(prop.is_list for prop in self.properties)

    def min_bytes(self) -> int:
        """Fewest bytes the element's rows take in a binary body (exact without list properties)."""
        return self.count * sum(prop.min_bytes() for prop in self.properties)

    def dtype(self, byte_order: str) -> np.dtype:
        """Structured dtype of a row of scalar properties, in `byte_order` ('<', '>' or '=')."""
        return np.dtype([(prop.name, byte_order + prop.value_type) for prop in self.properties])


@dataclass(frozen=True)
class PlyHeader:
    """What the header says: encoding, elements in file order, comments, and where the body starts."""

    encoding: str  # a key of BYTE_ORDERS
    elements: tuple[PlyElement, ...]
    comments: tuple[str, ...]
    obj_info: tuple[str, ...]
    body_start: int  # byte offset of the first byte after 'end_header' and its line ending

    def vertex_index(self, path: Path) -> int:
        """Position of the vertex element; unreadable when the header declares none."""
        names = [element.name for element in self.elements]
        if VERTEX not in names:
            raise SampleError("unreadable", f"{path}: PLY header declares no '{VERTEX}' element")
        return names.index(VERTEX)


# ------------------------------------------------------------------------------------------ header
class _HeaderBuilder:
    """Collects header lines one at a time, checking the order PLY requires."""

    def __init__(self) -> None:
        self.encoding: str | None = None
        self.elements: list[tuple[str, int, list[PlyProperty]]] = []
        self.comments: list[str] = []
        self.obj_info: list[str] = []

    def add(self, line: str) -> None:
        """Take one stripped, non-empty header line other than 'end_header'."""
        keyword, *rest = line.split(None, 1)
        text = rest[0] if rest else ""
        tokens = text.split()
        if keyword == "comment":
            self.comments.append(text)
        elif keyword == "obj_info":
            self.obj_info.append(text)
        elif keyword == "format":
            self._add_format(tokens)
        elif keyword == "element":
            self._add_element(tokens)
        elif keyword == "property":
            self._add_property(tokens)
        else:
            raise ValueError(f"unknown header keyword {keyword!r}")

    def _add_format(self, tokens: list[str]) -> None:
        if self.encoding is not None or self.elements:
            raise ValueError("'format' must come once, before the elements")
        if len(tokens) != 2 or tokens[0] not in BYTE_ORDERS or tokens[1] != PLY_VERSION:
            raise ValueError(f"expected 'format {{{'|'.join(BYTE_ORDERS)}}} {PLY_VERSION}', got {tokens}")
        self.encoding = tokens[0]

    def _add_element(self, tokens: list[str]) -> None:
        if self.encoding is None:
            raise ValueError("'element' before 'format'")
        if len(tokens) != 2 or not tokens[1].isdigit():
            raise ValueError(f"expected 'element <name> <count>', got {tokens}")
        if any(name == tokens[0] for name, _, _ in self.elements):
            raise ValueError(f"element {tokens[0]!r} declared twice")
        self.elements.append((tokens[0], int(tokens[1]), []))

    def _add_property(self, tokens: list[str]) -> None:
        if not self.elements:
            raise ValueError("'property' before any 'element'")
        if tokens[:1] == ["list"]:
            if len(tokens) != 4 or _numpy_type(tokens[1])[0] not in "iu":
                raise ValueError(f"expected 'property list <integer type> <type> <name>', got {tokens}")
            prop = PlyProperty(tokens[3], _numpy_type(tokens[2]), _numpy_type(tokens[1]))
        elif len(tokens) == 2:
            prop = PlyProperty(tokens[1], _numpy_type(tokens[0]))
        else:
            raise ValueError(f"expected 'property <type> <name>', got {tokens}")
        properties = self.elements[-1][2]
        if any(other.name == prop.name for other in properties):
            raise ValueError(f"property {prop.name!r} declared twice")
        properties.append(prop)

    def build(self, body_start: int) -> PlyHeader:
        if self.encoding is None:
            raise ValueError("PLY header has no 'format' line")
        elements = tuple(PlyElement(name, count, tuple(props)) for name, count, props in self.elements)
        return PlyHeader(self.encoding, elements, tuple(self.comments), tuple(self.obj_info), body_start)


def _numpy_type(ply_type: str) -> str:
    """numpy code of a PLY scalar type name ('float' → 'f4')."""
    if ply_type not in PLY_TYPES:
        raise ValueError(f"unknown PLY type {ply_type!r}")
    return PLY_TYPES[ply_type]


def _read_head(path: Path) -> bytes:
    """The first MAX_HEADER_BYTES bytes; empty for a 0-byte file, unreadable when it cannot be opened."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(MAX_HEADER_BYTES)
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    if not head:
        raise SampleError("empty", f"{path}: empty file (0 bytes)")
    return head


def _line_ending(head: bytes, path: Path) -> bytes:
    """The line ending that follows the 'ply' magic; unreadable when there is no magic line."""
    after = head[len(PLY_MAGIC) :]
    newline = next((nl for nl in PLY_NEWLINES if after.startswith(nl)), None)
    if not head.startswith(PLY_MAGIC) or (newline is None and after):
        raise SampleError("unreadable", f"{path}: no 'ply' magic at the start; not a PLY file")
    if newline is None:
        raise SampleError("truncated", f"{path}: file ends inside its PLY header")
    return newline


def _parse_header(path: Path) -> PlyHeader:
    """Parse the header of the PLY file at `path` (SampleError on a bad or cut header)."""
    head = _read_head(path)
    newline = _line_ending(head, path)
    lines = head.split(newline)[1:-1]  # drop 'ply' and the unterminated rest
    builder = _HeaderBuilder()
    offset = len(PLY_MAGIC) + len(newline)
    for number, raw in enumerate(lines, start=2):
        offset += len(raw) + len(newline)
        try:
            line = raw.decode("ascii").strip()
            if line == "end_header":
                return builder.build(offset)
            if line:
                builder.add(line)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SampleError("unreadable", f"{path}: malformed PLY header (line {number}: {exc})") from None
    if len(head) < MAX_HEADER_BYTES:
        raise SampleError("truncated", f"{path}: file ends inside its PLY header")
    raise SampleError("unreadable", f"{path}: no 'end_header' in the first {MAX_HEADER_BYTES} bytes")


# ------------------------------------------------------------------------------------------ binary
def _check_binary_size(path: Path, header: PlyHeader) -> None:
    """Truncated when the body is shorter than the fewest bytes its elements need (a stat, no read)."""
    needed = sum(element.min_bytes() for element in header.elements)
    body = path.stat().st_size - header.body_start
    if body < needed:
        raise SampleError("truncated", f"{path}: header declares at least {needed} bytes, body has {body}")


def _read_binary_vertices(path: Path, header: PlyHeader, index: int) -> np.ndarray:
    """One np.fromfile of the vertex rows; the elements before them must have fixed-size rows."""
    vertex = header.elements[index]
    skip = sum(element.min_bytes() for element in header.elements[:index])
    with open(path, "rb") as handle:
        handle.seek(header.body_start + skip)
        return np.fromfile(handle, dtype=vertex.dtype(BYTE_ORDERS[header.encoding]), count=vertex.count)


# ------------------------------------------------------------------------------------------- ascii
def _data_lines(path: Path, body_start: int) -> Iterator[str]:
    """Non-blank body lines of an ascii PLY file (any line ending), each with its line ending."""
    with open(path, "rb") as raw:
        raw.seek(body_start)
        with io.TextIOWrapper(raw, encoding="ascii", newline=None) as text:
            yield from (line for line in text if line.strip())


def _ascii_vertex_rows(path: Path, header: PlyHeader, index: int) -> list[str]:
    """The vertex rows; truncated when the body has fewer lines than the elements' rows."""
    lines = _data_lines(path, header.body_start)
    declared = sum(element.count for element in header.elements)
    before = sum(element.count for element in header.elements[:index])
    try:
        skipped = sum(1 for _ in zip(range(before), lines, strict=False))
        rows = [line for _, line in zip(range(header.elements[index].count), lines, strict=False)]
        after = sum(1 for _ in zip(range(declared - before - len(rows)), lines, strict=False))
    except UnicodeDecodeError as exc:
        raise SampleError("unreadable", f"{path}: non-ASCII bytes in an ascii PLY body ({exc})") from None
    finally:
        lines.close()
    found = skipped + len(rows) + after
    if found < declared:
        raise SampleError("truncated", f"{path}: header declares {declared} rows, file has {found} lines")
    return rows


def _parse_ascii_rows(path: Path, rows: list[str], vertex: PlyElement) -> np.ndarray:
    """Vertex rows → structured array in native byte order, as plyfile gives for ascii files."""
    dtype = vertex.dtype("=")
    if not rows:
        return np.empty(0, dtype=dtype)
    last = rows[-1]
    if not last.endswith("\n") and len(last.split()) < len(vertex.properties):
        raise SampleError("truncated", f"{path}: file ends inside the last vertex row")
    try:
        return np.loadtxt(rows, dtype=dtype, comments=None, ndmin=1)
    except (ValueError, OverflowError) as exc:
        raise SampleError("unreadable", f"{path}: bad vertex row in an ascii PLY body ({exc})") from None


# ---------------------------------------------------------------------------------------- fallback
def _read_with_plyfile(path: Path) -> np.ndarray:
    """The vertex element via plyfile, for the layouts we do not read ourselves."""
    try:
        return plyfile.PlyData.read(str(path), mmap=False)[VERTEX].data
    except plyfile.PlyElementParseError as exc:
        reason = "truncated" if exc.message == EARLY_EOF else "unreadable"
        raise SampleError(reason, f"{path}: {exc}") from None
    except Exception as exc:  # plyfile raises many types for garbage input
        raise SampleError("unreadable", f"{path}: not a readable PLY file ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------ public
def read_ply_vertices(path: Path) -> np.ndarray:
    """The `vertex` element of a PLY file as a structured array [V] (names and types as in the file).

    Binary files keep the file's byte order in the dtype (as plyfile does); ascii files give native
    order. Raises SampleError('empty' | 'unreadable' | 'truncated') for a bad file.
    """
    path = Path(path)
    header = _parse_header(path)
    index = header.vertex_index(path)
    vertex = header.elements[index]
    if not vertex.properties:
        raise SampleError("unreadable", f"{path}: the PLY '{VERTEX}' element has no properties")
    if header.encoding == "ascii":
        rows = _ascii_vertex_rows(path, header, index)
        return _read_with_plyfile(path) if vertex.has_lists else _parse_ascii_rows(path, rows, vertex)
    _check_binary_size(path, header)
    if any(element.has_lists for element in header.elements[: index + 1]):
        return _read_with_plyfile(path)
    return _read_binary_vertices(path, header, index)
