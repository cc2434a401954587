"""MinkUNet34 on spconv vs on MinkowskiEngine, voxel-only and joint, through the real `depthcontrast pretrain` CLI.

Writes room-like frames (50,000 points with RGB, binary PLY) to a folder, runs `depthcontrast download` and
`preprocess` on it as a `local` dataset, then pretrains four runs side by side on the same machine:
- mink_<stack>: the original's indoor MinkUNet voxel-only run (5 cm voxels, RGB);
- joint_<stack>: the original's indoor joint run, PointNet++ 1x + MinkUNet, loss_types [NPID, CMC], all weights 0.5;
batch 32 per GPU, 20,000 points per view. Prints, per run, the steady-state samples/s (median over the logged steps
after the warm-up), the data-wait / compute split of a step and the peak GPU memory, from the run's metrics.csv.

    python bench/voxel_stacks.py                      # on a CUDA machine with spconv-cu126 and MinkowskiEngine
    python bench/voxel_stacks.py --stacks spconv --frames 256 --epochs 1 --device cpu   # a quick look on CPU
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pretrain_throughput import synthetic_room_frame  # bench/ is on sys.path when run as a script

from depthcontrast.architectures import VOXEL_STACKS

FRAME_POINTS = 50_000  # the original's ScanNet depth frames
WARMUP_STEPS = 5
VOXEL = {"name": "minkunet", "voxel_size": [0.05, 0.05, 0.05]}  # the original's 5 cm voxels, RGB input


def room_frame(rng: np.random.Generator, points: int) -> np.ndarray:
    """pretrain_throughput's room (floor, two walls, boxes) with RGB by surface height and side: [points, 6]."""
    xyz = synthetic_room_frame(rng, points)
    surface = np.floor(xyz[:, 2] * 2).clip(0, 5).astype(int) * 2 + (xyz[:, 0] > 0)
    palette = rng.integers(0, 256, (12, 3))
    rgb = np.clip(palette[surface] + rng.normal(0, 12, (points, 3)), 0, 255)
    return np.c_[xyz, rgb]


def write_ply(path: Path, cloud: np.ndarray) -> None:
    vertex = np.empty(len(cloud), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                   ("blue", "u1")])  # fmt: skip
    for i, name in enumerate(("x", "y", "z", "red", "green", "blue")):
        vertex[name] = cloud[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(cloud)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path.write_bytes(header.encode() + vertex.tobytes())


def runs(args: argparse.Namespace) -> dict[str, dict]:
    common = {
        "datasets": ["rooms"],
        "batch_size": args.batch,
        "points_per_view": args.points,
        "epochs": args.epochs,
        "num_workers": args.workers,
        "precision": args.precision,
        "log_every_steps": 1,
        "checkpoint_every_epochs": args.epochs,
        "verify_shards": False,
    }
    joint_loss = {"loss_types": ["NPID", "CMC"], "within_format_weights": [0.5, 0.5],
                  "across_format_weights": [0.5, 0.5]}  # fmt: skip
    out = {}
    for stack in args.stacks:
        voxel = {**VOXEL, "stack": stack}
        out[f"mink_{stack}"] = {**common, "representations": ["voxel"], "voxel_backbone": voxel}
        out[f"joint_{stack}"] = {
            **common,
            "representations": ["point", "voxel"],
            "backbone": {"name": "pointnet2_ssg", "scale": 1},
            "voxel_backbone": voxel,
            "loss": joint_loss,
        }
    return out


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "depthcontrast", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"depthcontrast {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def summary(metrics: Path) -> dict[str, float]:
    with metrics.open() as stream:
        rows = list(csv.DictReader(stream))[WARMUP_STEPS:]
    if not rows:
        sys.exit(f"{metrics}: no steps after the {WARMUP_STEPS}-step warm-up: raise --frames or --epochs")
    pick = lambda key: [float(r[key]) for r in rows if r.get(key)]  # noqa: E731
    memory = pick("gpu_mem_gib")
    return {
        "steps": len(rows),
        "samples_per_s": statistics.median(pick("samples_per_s")),
        "data_ms": 1000 * statistics.median(pick("data_s")),
        "compute_ms": 1000 * statistics.median(pick("compute_s")),
        "peak_gib": max(memory) if memory else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", nargs="+", default=list(VOXEL_STACKS), choices=VOXEL_STACKS)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="voxel_stacks-"))
    scans, results = work / "scans", work / "results"
    scans.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(args.frames):
        write_ply(scans / f"room_{i:05d}.ply", room_frame(rng, FRAME_POINTS))
    datasets = {"rooms": {"source": {"kind": "local", "path": str(scans)}, "preprocess": {"max_points": FRAME_POINTS}}}
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"datasets": datasets, "pretrain": runs(args)}))
    for stage in ("download", "preprocess"):
        cli(stage, "--config", str(config), "--dataset", "rooms", "--results", str(results))
    elapsed = time.perf_counter() - start
    print(f"{args.frames} frames of {FRAME_POINTS} points written and preprocessed in {elapsed:.0f} s")
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    print(f"# {datetime.date.today()} {device}, batch {args.batch} x {args.points} points/view, {args.precision}, "
          f"{args.workers} workers, steady state after {WARMUP_STEPS} steps")  # fmt: skip
    print("| run | stack | steps | samples/s | data wait ms | compute ms | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for name in runs(args):
        out = work / f"pretrain_{name}"
        cli("pretrain", name, "--config", str(config), "--results", str(results), "--out", str(out),
            "--device", args.device)  # fmt: skip
        s = summary(out / "metrics.csv")
        kind, stack = name.split("_", 1)
        print(f"| {kind} | {stack} | {s['steps']} | {s['samples_per_s']:.1f} | {s['data_ms']:.1f} | "
              f"{s['compute_ms']:.1f} | {s['peak_gib']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
