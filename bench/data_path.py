"""Data-path benchmark: the seed's one-.npy-per-frame layout vs our HDF5 shards.

Prints, per storage option: bytes on disk and files per 10k samples relative to .npy, preprocessing
points/s (ShardWriter end to end, one process), and random-order read samples/s with a warm and a
cold page cache. Samples are synthetic depth frames: an analytically ray-cast room (walls, floor,
boxes, spheres) with depth-dependent noise, 1 mm depth steps and textured colours, so their
compressibility is that of real frames, neither noise nor constant.

    python bench/data_path.py --frames 800 --readers 1 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthcontrast.data.records import Sample
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.data.shards import CHUNK_POINTS, COMPRESSIONS

POINTS_PER_FRAME = 50_000  # the seed's cap
IMAGE_W, IMAGE_H, FOCAL_PX = 320, 240, 262.5  # a 640x480 Kinect-like camera at half resolution
DEPTH_STEP_M = 0.001  # depth sensors report millimetres
NOISE_M_PER_M2 = 0.0015  # structured-light noise grows with depth squared
SAMPLES_PER_SHARD = 256
DEFAULT_LEVEL = 3
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
DEFAULT_OPTIONS = (
    "none",
    "none-chunked",
    "lz4",
    "zstd-1",
    "zstd-3",
    "blosc-lz4",
    "gzip-4",
    "q1mm-none",
    "q1mm-lz4",
    "q1mm-zstd-1",
    "q1mm-zstd-3",
    "q1mm-blosc-lz4",
)


# ---------------------------------------------------------------------------- synthetic frames
def _ray_cast_room(rng: np.random.Generator, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth along camera rays `dirs` [R, 3] in a random room; returns (t [R], surface id [R])."""
    half = rng.uniform([1.5, 1.2, 2.0], [3.5, 1.6, 4.5])  # room half-extents x, y, z
    centre = rng.uniform(-0.5, 0.5, 3) * [0.5, 0.3, 1.0]
    t = np.full(len(dirs), np.inf)
    sid = np.zeros(len(dirs), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):  # the room's six walls, seen from inside
            for sign in (-1, 1):
                tw = (centre[axis] + sign * half[axis]) / dirs[:, axis]
                hit = (tw > 0) & (tw < t)
                t[hit], sid[hit] = tw[hit], 1 + 2 * axis + (sign > 0)
        for obj in range(int(rng.integers(2, 6))):  # spheres standing in the room
            c = centre + rng.uniform(-0.7, 0.7, 3) * half
            r = rng.uniform(0.2, 0.7)
            b = dirs @ c
            disc = b * b - (c @ c - r * r)
            ts = b - np.sqrt(np.maximum(disc, 0))
            hit = (disc > 0) & (ts > 0) & (ts < t)
            t[hit], sid[hit] = ts[hit], 10 + obj
    return t, sid


def synthetic_frame(seed: int) -> Sample:
    """One depth frame: back-projected, noisy, mm-quantised depth; rgb with shading and texture."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.arange(IMAGE_W), np.arange(IMAGE_H))
    dirs = np.stack(
        [(u.ravel() - IMAGE_W / 2) / FOCAL_PX, (v.ravel() - IMAGE_H / 2) / FOCAL_PX, np.ones(u.size)], axis=1
    )
    t, sid = _ray_cast_room(rng, dirs)
    z = t  # dirs have unit z: the ray parameter is the depth
    z = z + rng.normal(0, NOISE_M_PER_M2 * z * z)
    z = np.round(z / DEPTH_STEP_M) * DEPTH_STEP_M
    xyz = dirs * z[:, None]
    keep = np.sort(rng.choice(len(z), POINTS_PER_FRAME, replace=False))  # the seed's cap, scan order
    xyz, sid = xyz[keep], sid[keep]
    palette = rng.uniform(40, 220, (32, 3))
    base = palette[sid % 32]
    stripes = 18 * np.sin(xyz[:, [0]] * rng.uniform(4, 12)) * np.cos(xyz[:, [1]] * rng.uniform(4, 12))
    shade = 1.2 - 0.12 * z[keep, None]
    rgb = np.clip(base * shade + stripes + rng.normal(0, 3, (len(keep), 3)), 0, 255).astype(np.uint8)
    return Sample(sample_id=f"bench/scene{seed:05d}", points=xyz.astype(np.float32), features={"rgb": rgb})


# ---------------------------------------------------------------------------- storage options
@dataclass(frozen=True)
class Option:
    """A shard storage option parsed from a name like 'q1mm-zstd-3' or 'none-chunked'."""

    name: str
    compression: str
    level: int
    quantum: float | None
    chunk_points: int | None  # None: contiguous (compression 'none' only)

    @staticmethod
    def parse(name: str, chunk_points: int) -> Option:
        rest, quantum = name, None
        if rest.startswith("q1mm-"):
            rest, quantum = rest[len("q1mm-") :], 0.001
        chunked = rest.endswith("-chunked")
        rest = rest.removesuffix("-chunked")
        codec, _, level = rest.rpartition("-")
        if not (level.isdigit() and codec in COMPRESSIONS):
            codec, level = rest, str(DEFAULT_LEVEL)
        contiguous = codec == "none" and not chunked
        return Option(name, codec, int(level), quantum, None if contiguous else chunk_points)


def write_shards(samples: list[Sample], out: Path, option: Option) -> float:
    """Write `samples` with ShardWriter; return the seconds it took end to end."""
    start = time.perf_counter()
    writer = ShardWriter(
        out,
        dataset="bench",
        source="synthetic",
        params={"bench": option.name},
        samples_per_shard=SAMPLES_PER_SHARD,
        compression=option.compression,
        compression_level=option.level,
        xyz_quantum_m=option.quantum,
        chunk_points=option.chunk_points,
    )
    with writer:
        for sample in samples:
            writer.add(sample)
    return time.perf_counter() - start


def write_npy(samples: list[Sample], out: Path) -> None:
    """The seed's layout: one [P, 6] float32 xyz+rgb .npy per frame."""
    out.mkdir(parents=True)
    for i, s in enumerate(samples):
        np.save(out / f"{i:06d}.npy", np.concatenate([s.points, s.features["rgb"].astype(np.float32)], 1))


def dir_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


# ---------------------------------------------------------------------------- readers
_READ: Callable[[int], int] | None = None  # set in the parent before the pool forks


def _read_npy_factory(root: Path) -> Callable[[int], int]:
    def read(i: int) -> int:
        frame = np.load(root / f"{i:06d}.npy")
        points, rgb = frame[:, :3], frame[:, 3:]
        assert rgb.shape[0] == points.shape[0]
        return points.shape[0]

    return read


def _read_shard_factory(root: Path) -> Callable[[int], int]:
    dataset = ShardDataset(root, verify=False)  # verification timed separately

    def read(i: int) -> int:
        return dataset[i]["points"].shape[0]

    return read


def _worker(indices: list[int]) -> int:
    assert _READ is not None
    return sum(_READ(i) for i in indices)


def drop_caches() -> bool:
    """Empty the page cache (root only); False when not allowed."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
        return True
    except OSError:
        return False


def timed_read(make_reader: Callable[[], Callable[[int], int]], order: np.ndarray, readers: int, cold: bool) -> float:
    """Samples/s reading `order` with `readers` forked processes, fresh handles, warm or cold cache."""
    global _READ
    _READ = make_reader()
    chunks = [order[r::readers].tolist() for r in range(readers)]
    ctx = mp.get_context("fork")
    with ctx.Pool(readers) as pool:
        pool.map(int, range(readers))  # workers are up before the clock starts
        if cold and not drop_caches():
            warnings.warn("cannot drop the page cache (not root?): the cold figures are warm", stacklevel=1)
        start = time.perf_counter()
        total = sum(pool.map(_worker, chunks))
        elapsed = time.perf_counter() - start
    assert total == len(order) * POINTS_PER_FRAME
    return len(order) / elapsed


def read_rates(
    npy_reader: Callable[[], Callable[[int], int]],
    shard_reader: Callable[[], Callable[[int], int]],
    order: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Median samples/s of both layouts, cold then warm, the two alternating run by run.

    Ratios are medians of per-run ratios of adjacent runs, so load from other jobs on a shared
    machine hits both sides of a ratio alike.
    """
    rates: dict[str, list[float]] = {}
    for cache in ("cold", "warm"):
        if cache == "warm":  # fill the page cache with both layouts
            timed_read(npy_reader, order, args.readers, cold=False)
            timed_read(shard_reader, order, args.readers, cold=False)
        for _ in range(args.repeats):
            npy = timed_read(npy_reader, order, args.readers, cold=cache == "cold")
            shard = timed_read(shard_reader, order, args.readers, cold=cache == "cold")
            rates.setdefault(f"npy_{cache}", []).append(npy)
            rates.setdefault(f"shard_{cache}", []).append(shard)
            rates.setdefault(f"ratio_{cache}", []).append(shard / npy)
    return {key: statistics.median(values) for key, values in rates.items()}


# ---------------------------------------------------------------------------- main
def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument("--readers", type=int, default=1, help="reader processes (same for both layouts)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is printed")
    parser.add_argument("--options", nargs="+", default=list(DEFAULT_OPTIONS))
    parser.add_argument("--chunk-points", type=int, nargs="+", default=[CHUNK_POINTS])
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (default: a temp dir)")
    args = parser.parse_args()

    print(f"# data_path benchmark {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# load average at the start: {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="data_path-", dir=args.workdir))
    try:
        start = time.perf_counter()
        with mp.get_context("fork").Pool() as pool:
            samples = pool.map(synthetic_frame, range(args.frames))
        seconds = time.perf_counter() - start
        print(f"# {args.frames} frames x {POINTS_PER_FRAME} points generated in {seconds:.1f} s")
        order = np.random.default_rng(0).permutation(args.frames)

        write_npy(samples, work / "npy")
        npy_bytes, npy_files = dir_bytes(work / "npy")
        print(
            f"# .npy: {npy_bytes / 1e6:.0f} MB, {npy_files} files; {args.readers} reader(s), random order, "
            f"median of {args.repeats} runs; npy and shard runs alternate"
        )
        header = (
            "| option | chunk pts | bytes vs npy | files/10k | write Mpts/s/core | cold samples/s (npy) "
            "| cold vs npy | warm samples/s (npy) | warm vs npy |"
        )
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        for name in args.options:
            for chunk in args.chunk_points:
                option = Option.parse(name, chunk)
                out = work / f"{name}-{chunk}"
                seconds = write_shards(samples, out, option)
                shard_bytes, _ = dir_bytes(out)
                rates = read_rates(
                    lambda: _read_npy_factory(work / "npy"),
                    lambda out=out: _read_shard_factory(out),
                    order,
                    args,
                )
                print(
                    f"| {name} | {option.chunk_points or 'contiguous'} | {shard_bytes / npy_bytes:.2f} | "
                    f"{-(-10_000 // SAMPLES_PER_SHARD) + 1} | "
                    f"{args.frames * POINTS_PER_FRAME / seconds / 1e6:.1f} | "
                    f"{rates['shard_cold']:.0f} ({rates['npy_cold']:.0f}) | {rates['ratio_cold']:.2f} | "
                    f"{rates['shard_warm']:.0f} ({rates['npy_warm']:.0f}) | {rates['ratio_warm']:.2f} |",
                    flush=True,
                )
                shutil.rmtree(out)
                if option.chunk_points is None:
                    break
        verify_dir = work / "verify"
        write_shards(samples, verify_dir, Option.parse("lz4", CHUNK_POINTS))
        dataset = ShardDataset(verify_dir, verify=True)
        start = time.perf_counter()
        dataset.verify_all()
        seconds = time.perf_counter() - start
        print(f"# sha256 verify (warm cache): {dataset.index.num_bytes / seconds / 1e9:.2f} GB/s")
        print(f"# load average at the end: {os.getloadavg()[0]:.2f} (other jobs on the machine count)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
