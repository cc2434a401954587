"""A small VRML 2.0 (VRML97) reader for the triangle surfaces of CAD part models (the KiCad 3D library).

What it reads: `Shape { geometry IndexedFaceSet { coord Coordinate { point [...] } coordIndex [...] } }` at any depth
of `Group`/`Transform`/`Collision`/`Anchor`/`Billboard` `children`, `DEF name` / `USE name` of any node, and the
`Transform` fields translation, rotation (axis-angle), scale, scaleOrientation and center. Faces are polygons closed
by -1 in coordIndex and are fan-triangulated. Other geometry (IndexedLineSet, PointSet, Box, Sphere, ...) has no
triangles to sample and is skipped; appearance, normals, colours and texture coordinates are parsed and dropped.
PROTO, EXTERNPROTO and ROUTE are not supported (the KiCad library has none): they are an error, as is anything
that does not parse. Every error is a DataError naming the file and what is wrong.

Numeric arrays (the bulk of a file) are parsed with numpy in one call per array, not token by token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depthcontrast.errors import DataError

HEADER = "#VRML V2.0"
GROUPING_NODES = ("Group", "Transform", "Collision", "Anchor", "Billboard", "Switch", "LOD")
UNSUPPORTED = ("PROTO", "EXTERNPROTO", "ROUTE")

_TOKEN = re.compile(r'(?:[\s,]|#[^\n]*)*([{}\[\]]|"(?:[^"\\]|\\.)*"|[^\s{}\[\]",#]+)')
_SKIP = re.compile(r"(?:[\s,]|#[^\n]*)*")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_NOT_NUMERIC = re.compile(r"[^0-9eE+\-.,\s]")


@dataclass
class Node:
    """A parsed node: its type and fields (numbers as float64 arrays, nodes as Node, MFNode as lists)."""

    kind: str
    fields: dict[str, Any]


class _Parser:
    def __init__(self, text: str, source: str):
        self.text, self.source, self.pos = text, source, 0
        self.defs: dict[str, Node] = {}
        self._peeked: tuple[int, re.Match[str] | None] | None = None  # the token at a position, matched once

    def fail(self, what: str) -> DataError:
        line = self.text.count("\n", 0, self.pos) + 1
        return DataError(f"{self.source}: line {line}: {what}")

    def _match(self) -> re.Match[str] | None:
        if self._peeked is None or self._peeked[0] != self.pos:
            self._peeked = (self.pos, _TOKEN.match(self.text, self.pos))
        return self._peeked[1]

    def peek(self) -> str | None:
        match = self._match()
        return match.group(1) if match else None

    def next(self) -> str:
        match = self._match()
        if match is None:
            self.pos = len(self.text)
            raise self.fail("unexpected end of file")
        self.pos = match.end()
        return match.group(1)

    def expect(self, token: str) -> None:
        got = self.next()
        if got != token:
            raise self.fail(f"expected {token!r}, got {got[:40]!r}")

    def nodes(self) -> list[Node]:
        """Top-level statements until the end of the file."""
        found = []
        while self.peek() is not None:
            node = self.node()
            if node is not None:
                found.append(node)
        return found

    def node(self) -> Node | None:
        """A node statement: [DEF name] Type { fields } | USE name | NULL."""
        token = self.next()
        if token == "NULL":
            return None
        if token == "USE":
            name = self.next()
            if name not in self.defs:
                raise self.fail(f"USE {name!r} before its DEF")
            return self.defs[name]
        name = None
        if token == "DEF":
            name, token = self.next(), self.next()
        if token in UNSUPPORTED:
            raise self.fail(f"{token} is not supported")
        if not token[0].isalpha():
            raise self.fail(f"expected a node type, got {token[:40]!r}")
        self.expect("{")
        node = Node(token, {})
        if name is not None:
            self.defs[name] = node  # before the body: a USE inside refers to it only after its DEF in VRML too
        while True:
            field = self.peek()
            if field is None:
                raise self.fail(f"unexpected end of file inside {token}")
            if field == "}":
                self.next()
                return node
            if field in UNSUPPORTED:
                raise self.fail(f"{field} is not supported")
            self.next()
            if not field[0].isalpha():
                raise self.fail(f"expected a field name in {token}, got {field[:40]!r}")
            node.fields[field] = self.value()

    def value(self) -> Any:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end of file: a field has no value")
        if token == "[":
            self.next()
            return self.array()
        if token in ("DEF", "USE", "NULL") or (token[0].isalpha() and token not in ("TRUE", "FALSE")):
            return self.node()
        if token.startswith('"') or token in ("TRUE", "FALSE"):
            self.next()
            return token
        return self.numbers_until_word()

    def numbers_until_word(self) -> np.ndarray:
        values = []
        while True:
            token = self.peek()
            if token is None or not _NUMBER.match(token):
                break
            values.append(float(self.next()))
        return np.asarray(values, dtype=np.float64)

    def array(self) -> Any:
        """After `[`: numbers (one numpy parse) or a list of nodes / strings, up to the matching `]`."""
        self.pos = _SKIP.match(self.text, self.pos).end()
        end = self.text.find("]", self.pos)
        if end < 0:
            raise self.fail("unexpected end of file: an array has no closing ]")
        body = self.text[self.pos : end]
        if not _NOT_NUMERIC.search(body):
            try:
                values = np.array(body.replace(",", " ").split(), dtype=np.float64)
            except ValueError:
                raise self.fail("a numeric array holds something that is not a number") from None
            self.pos = end + 1
            return values
        items: list[Any] = []
        while True:
            token = self.peek()
            if token is None:
                raise self.fail("unexpected end of file inside an array")
            if token == "]":
                self.next()
                return items
            if token.startswith('"'):
                items.append(self.next())
            elif _NUMBER.match(token):
                items.append(float(self.next()))
            elif items and isinstance(items[-1], float):
                raise self.fail(f"a numeric array holds something that is not a number: {token[:40]!r}")
            else:
                items.append(self.node())


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    """3x3 matrix of a VRML rotation (x, y, z, angle in radians)."""
    axis, angle = np.asarray(axis_angle[:3], dtype=np.float64), float(axis_angle[3])
    norm = np.linalg.norm(axis)
    if norm == 0 or angle == 0:
        return np.eye(3)
    x, y, z = axis / norm
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _field(node: Node, name: str, size: int, default: tuple[float, ...], source: str) -> np.ndarray:
    value = node.fields.get(name)
    if value is None:
        return np.asarray(default, dtype=np.float64)
    if not isinstance(value, np.ndarray) or value.size != size:
        raise DataError(f"{source}: {node.kind}.{name} must be {size} numbers")
    return value


def _transform_matrix(node: Node, source: str) -> np.ndarray:
    """4x4 matrix of a Transform: T(translation) C R SR S -SR -C (VRML97 §6.52)."""
    t = _field(node, "translation", 3, (0, 0, 0), source)
    c = _field(node, "center", 3, (0, 0, 0), source)
    r = _rotation(_field(node, "rotation", 4, (0, 0, 1, 0), source))
    sr = _rotation(_field(node, "scaleOrientation", 4, (0, 0, 1, 0), source))
    s = np.diag(_field(node, "scale", 3, (1, 1, 1), source))
    linear = r @ sr @ s @ sr.T
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = t + c - linear @ c
    return matrix


def _faces(node: Node, source: str) -> tuple[np.ndarray, np.ndarray]:
    """An IndexedFaceSet's vertices [V, 3] and fan-triangulated faces [F, 3] (int64)."""
    coord = node.fields.get("coord")
    if coord is None:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    points = coord.fields.get("point") if isinstance(coord, Node) else None
    if not isinstance(points, np.ndarray) or points.size % 3:
        raise DataError(f"{source}: an IndexedFaceSet's coord has no point array of xyz triples")
    vertices = points.reshape(-1, 3)
    index = node.fields.get("coordIndex")
    if not isinstance(index, np.ndarray):
        index = np.asarray(index or [], dtype=np.float64)
    index = index.astype(np.int64)
    if index.size and (index.max() >= len(vertices) or index.min() < -1):
        raise DataError(f"{source}: coordIndex refers to vertex {index.max()} of {len(vertices)}")
    if index.size % 4 == 0 and (index[3::4] == -1).all() and (index.reshape(-1, 4)[:, :3] >= 0).all():
        return vertices, index.reshape(-1, 4)[:, :3].copy()  # all triangles, the common case: no loop
    triangles = []
    breaks = np.flatnonzero(index == -1)
    start = 0
    for stop in [*breaks.tolist(), len(index)]:
        polygon = index[start:stop]
        start = stop + 1
        if len(polygon) >= 3:
            fan = np.empty((len(polygon) - 2, 3), dtype=np.int64)
            fan[:, 0], fan[:, 1], fan[:, 2] = polygon[0], polygon[1:-1], polygon[2:]
            triangles.append(fan)
    faces = np.concatenate(triangles) if triangles else np.zeros((0, 3), dtype=np.int64)
    return vertices, faces


def _collect(node: Node | None, matrix: np.ndarray, out: list[np.ndarray], source: str) -> None:
    if node is None:
        return
    if node.kind == "Shape":
        geometry = node.fields.get("geometry")
        if isinstance(geometry, Node) and geometry.kind == "IndexedFaceSet":
            vertices, faces = _faces(geometry, source)
            if len(faces):
                world = vertices @ matrix[:3, :3].T + matrix[:3, 3]
                out.append(world[faces])
        return
    if node.kind in GROUPING_NODES:
        if node.kind == "Transform":
            matrix = matrix @ _transform_matrix(node, source)
        for key in ("children", "choice", "level"):
            children = node.fields.get(key, [])
            for child in children if isinstance(children, list) else [children]:
                if isinstance(child, Node):
                    _collect(child, matrix, out, source)


def parse_vrml(text: str, source: str) -> np.ndarray:
    """Every triangle of a VRML 2.0 text in world coordinates: float64 [T, 3, 3] (T may be 0)."""
    if not text.startswith(HEADER):
        raise DataError(f"{source}: not a VRML 2.0 file (no '{HEADER}' header)")
    parser = _Parser(text, source)
    triangles: list[np.ndarray] = []
    for node in parser.nodes():
        _collect(node, np.eye(4), triangles, source)
    return np.concatenate(triangles) if triangles else np.zeros((0, 3, 3))


def read_vrml(path: str | Path) -> np.ndarray:
    """The triangles [T, 3, 3] of a .wrl file (see parse_vrml); DataError naming the file if unreadable."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_vrml(text, str(path))
