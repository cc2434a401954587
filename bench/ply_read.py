"""PLY mesh read benchmark: plyfile (as `readers.read_ply` called it) vs our vertex-only reader.

Writes one mesh to a temporary folder: V vertices (float32 x, y, z, uchar red, green, blue, int
label) and F triangles (uchar count + 3 int indices), binary little-endian by default. Prints the
median read time of `plyfile.PlyData.read(path, mmap=False)["vertex"].data` and of
`ply_vertices.read_ply_vertices(path)` over REPEATS runs (warm page cache), and the ratio
plyfile / ours, after checking that both give the same vertex table.

    PYTHONPATH=. python3 bench/ply_read.py [--vertices 200000] [--faces 400000] [--format binary_little_endian]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import plyfile

from depthcontrast.data.ply_vertices import read_ply_vertices

FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "="}
VERTEX_PROPERTIES = [("x", "f4", "float"), ("y", "f4", "float"), ("z", "f4", "float")]
VERTEX_PROPERTIES += [("red", "u1", "uchar"), ("green", "u1", "uchar"), ("blue", "u1", "uchar")]
VERTEX_PROPERTIES += [("label", "i4", "int")]
SEED = 0


def mesh_arrays(num_vertices: int, num_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Random vertices (structured, native order) and triangles [F, 3] of valid vertex indices."""
    rng = np.random.default_rng(SEED)
    vertices = np.empty(num_vertices, dtype=[(name, code) for name, code, _ in VERTEX_PROPERTIES])
    for name, code, _ in VERTEX_PROPERTIES:
        vertices[name] = rng.uniform(-5, 5, num_vertices) if code == "f4" else rng.integers(0, 200, num_vertices)
    return vertices, rng.integers(0, num_vertices, (num_faces, 3), dtype=np.int32)


def ply_header(encoding: str, num_vertices: int, num_faces: int) -> bytes:
    lines = ["ply", f"format {encoding} 1.0", "comment bench/ply_read.py", f"element vertex {num_vertices}"]
    lines += [f"property {ply_type} {name}" for name, _, ply_type in VERTEX_PROPERTIES]
    lines += [f"element face {num_faces}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_mesh(path: Path, vertices: np.ndarray, triangles: np.ndarray, encoding: str) -> None:
    """The mesh as PLY, with numpy (plyfile writes list rows one by one: minutes for this size)."""
    with open(path, "wb") as handle:
        handle.write(ply_header(encoding, len(vertices), len(triangles)))
        if encoding == "ascii":
            np.savetxt(handle, vertices, fmt=["%.9g"] * 3 + ["%d"] * 4)
            np.savetxt(handle, np.column_stack([np.full(len(triangles), 3), triangles]), fmt="%d")
            return
        order = FORMATS[encoding]
        vertices.astype([(name, order + code) for name, code, _ in VERTEX_PROPERTIES]).tofile(handle)
        faces = np.empty(len(triangles), dtype=[("n", "u1"), ("indices", order + "i4", (3,))])
        faces["n"], faces["indices"] = 3, triangles
        faces.tofile(handle)


def median_seconds(read: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Median wall time of `read()` over `repeats` runs, and its last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = read()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def same_table(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and all(np.array_equal(a[name], b[name]) for name in a.dtype.names)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the platform's machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vertices", type=int, default=200_000)
    parser.add_argument("--faces", type=int, default=400_000)
    parser.add_argument("--format", choices=FORMATS, default="binary_little_endian")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"machine: {cpu_name()} | {os.cpu_count()} CPUs | "
        f"python {platform.python_version()} | numpy {np.__version__} | plyfile {metadata.version('plyfile')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh.ply"
        write_mesh(path, *mesh_arrays(args.vertices, args.faces), args.format)
        size_mb = path.stat().st_size / 1e6
        print(f"mesh: {args.vertices} vertices, {args.faces} triangles, {args.format}, {size_mb:.1f} MB")
        print(f"median of {args.repeats} reads, warm page cache")
        theirs_s, theirs = median_seconds(
            lambda: plyfile.PlyData.read(str(path), mmap=False)["vertex"].data, args.repeats
        )
        ours_s, ours = median_seconds(lambda: read_ply_vertices(path), args.repeats)
    if not same_table(ours, theirs):
        print("MISMATCH: read_ply_vertices and plyfile give different vertex tables", file=sys.stderr)
        return 1
    print(f"plyfile.PlyData.read(mmap=False): {theirs_s * 1e3:10.1f} ms")
    print(f"read_ply_vertices:                {ours_s * 1e3:10.1f} ms")
    print(f"ratio plyfile / ours:             {theirs_s / ours_s:10.1f}x (identical vertex tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
