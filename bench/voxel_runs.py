"""The runs with a voxel encoder, in this process through `Trainer`: samples/s, step split, peak memory, and where
the GPU time goes.

- joint_lidar: the original's LiDAR joint run (its Waymo setting). PointNet-MSG (PointRCNN's settings, x, y, z +
  intensity) on 16,384 points per view and the sparse UNet on 0.1 × 0.1 × 0.2 m voxels of the full views, the
  LiDAR augmentations, loss NPID on both (the original's LiDAR terms). Data: synthetic sweeps (ground with a slope,
  boxes of cars and buildings, poles, density falling with range like a spinning sensor, intensity by surface;
  120,000 points each, in the sensor frame).
- mink_<stack>: the original's indoor MinkUNet voxel-only run (5 cm voxels, RGB), on spconv or MinkowskiEngine.
- joint_<stack>: the original's indoor joint run, PointNet++ 1x + MinkUNet, loss_types [NPID, CMC], weights 0.5.
  Data for both: bench/voxel_stacks.py's synthetic room frames with RGB, 50,000 points.

Batch 32, bf16 by default. Each (run, `--compile` setting) is one row; `--profile` adds the per-kernel-category
table of bench/profile_step.py for each run's last setting.

    python bench/voxel_runs.py --runs joint_lidar mink_spconv --compile off on --steps 20 --workers 10 --profile
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np
import torch
from pretrain_throughput import measure, write_shards  # bench/ is on sys.path when run as a script
from voxel_stacks import FRAME_POINTS, VOXEL, room_frame

from depthcontrast.config import validate_config
from depthcontrast.data.records import Sample
from depthcontrast.launch import WorldInfo
from depthcontrast.train import Trainer

SWEEP_POINTS = 120_000
SENSOR_HEIGHT_M = 1.8
POINTS_PER_VIEW = 16_384  # the original's LiDAR views
ROOM_POINTS_PER_VIEW = 20_000  # the original's indoor views
RUNS = ("joint_lidar", "mink_spconv", "mink_minkowski", "joint_spconv", "joint_minkowski")


def synthetic_sweep(rng: np.random.Generator, points: int) -> tuple[np.ndarray, np.ndarray]:
    """xyz [points, 3] float32 in the sensor frame and intensity [points, 1]: ground, boxes, poles."""
    ranges = np.exp(rng.uniform(np.log(2.0), np.log(75.0), points))  # denser near the sensor
    angles = rng.uniform(-np.pi, np.pi, points)
    xy = np.c_[ranges * np.cos(angles), ranges * np.sin(angles)]
    z = -SENSOR_HEIGHT_M + 0.01 * xy[:, 0] + rng.normal(0, 0.03, points)
    intensity = rng.uniform(0.0, 0.2, points)
    boxes = rng.uniform([-60, -60, 1.5, 1.5, 1.4], [60, 60, 12.0, 8.0, 10.0], (24, 5))  # x, y, length, width, height
    hit = rng.integers(0, len(boxes), points // 3)
    chosen = rng.choice(points, points // 3, replace=False)
    box = boxes[hit]
    xy[chosen] = box[:, :2] + (rng.uniform(-0.5, 0.5, (len(hit), 2)) * box[:, 2:4])
    z[chosen] = -SENSOR_HEIGHT_M + rng.uniform(0, 1, len(hit)) * box[:, 4]
    intensity[chosen] = rng.uniform(0.3, 1.0, len(hit))
    poles = rng.choice(points, points // 20, replace=False)
    xy[poles] = rng.uniform(-40, 40, (12, 2))[rng.integers(0, 12, len(poles))] + rng.normal(0, 0.1, (len(poles), 2))
    z[poles] = -SENSOR_HEIGHT_M + rng.uniform(0, 6, len(poles))
    xyz = np.round(np.c_[xy, z], 3).astype(np.float32)
    return xyz, intensity[:, None].astype(np.float32)


def sweep_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    xyz, intensity = synthetic_sweep(rng, SWEEP_POINTS)
    return Sample(sample_id=sample_id, points=xyz, features={"intensity": intensity})


def rgb_room_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    cloud = room_frame(rng, FRAME_POINTS)
    return Sample(sample_id=sample_id, points=cloud[:, :3].astype(np.float32),
                  features={"rgb": cloud[:, 3:].astype(np.uint8)})  # fmt: skip


def run_settings(name: str, args: argparse.Namespace, compiled: bool) -> dict:
    """The run `name` (one of RUNS), validated (defaults filled) as the CLI would."""
    common = {"batch_size": args.batch, "epochs": 1000, "precision": args.precision, "compile": compiled,
              "num_workers": args.workers, "log_every_steps": 10}  # fmt: skip
    if name == "joint_lidar":
        run = {
            "datasets": ["bench_lidar"], "representations": ["point", "voxel"], "augmentations": "lidar",
            "backbone": {"name": "pointnet2_msg"},  # PointRCNN's settings, x, y, z + intensity
            "voxel_backbone": {"name": "spconv_unet"},  # the original's 0.1 x 0.1 x 0.2 m voxels, intensity
            "points_per_view": POINTS_PER_VIEW, "loss": {"num_negatives": 65536},  # the original's LiDAR queue
        }  # fmt: skip
    else:
        kind, stack = name.split("_")
        run = {"datasets": ["bench_rooms"], "augmentations": "indoor", "points_per_view": ROOM_POINTS_PER_VIEW,
               "voxel_backbone": {**VOXEL, "stack": stack}}  # fmt: skip
        if kind == "mink":
            run["representations"] = ["voxel"]
        else:
            run |= {
                "representations": ["point", "voxel"], "backbone": {"name": "pointnet2_ssg", "scale": 1},
                "loss": {"loss_types": ["NPID", "CMC"], "within_format_weights": [0.5, 0.5],
                         "across_format_weights": [0.5, 0.5]},
            }  # fmt: skip
    dataset = run["datasets"][0]
    config = {"datasets": {dataset: {"source": {"kind": "local", "path": "."}}}, "pretrain": {"bench": run | common}}
    validated = validate_config(config)["pretrain"]["bench"]
    return {key: value for key, value in validated.items() if key not in ("enabled", "export_targets", "resources")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=["joint_lidar"])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", nargs="+", choices=["on", "off"], default=["on"])
    parser.add_argument("--profile", action="store_true", help="per-category GPU time of the last setting")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/voxel_runs.py needs a CUDA GPU (and spconv-cu126; MinkowskiEngine for *_minkowski)")
    print(f"# {datetime.date.today()} {torch.cuda.get_device_name()} | torch {torch.__version__} | {args.precision}, "
          f"batch {args.batch}, {args.workers} workers, {args.frames} frames")  # fmt: skip
    print("| run | compile | samples/s | loader alone samples/s | data wait ms | forward ms | bwd ms | optimizer ms "
          "| peak GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        shards = {}
        for name in args.runs:
            dataset = "bench_lidar" if name == "joint_lidar" else "bench_rooms"
            if dataset not in shards:
                make = sweep_sample if dataset == "bench_lidar" else rgb_room_sample
                shards[dataset] = write_shards(Path(tmp) / dataset, args.frames, make)
            for setting in args.compile:
                torch.cuda.reset_peak_memory_stats()
                run = run_settings(name, args, setting == "on")
                out = Path(tmp) / f"{name}_{setting}"
                trainer = Trainer("bench", run, [shards[dataset]], out, WorldInfo(0, 1, 0, None), "cuda")
                r = measure(trainer, args.steps, args.warmup)
                print(f"| {name} | {setting} | {r['samples_per_s']:.1f} | {r['data_only_samples_per_s']:.0f} | "
                      f"{r['data']:.1f} | {r['forward']:.1f} | {r['backward']:.1f} | {r['optimizer']:.1f} | "
                      f"{r['peak_gib']:.1f} |", flush=True)  # fmt: skip
                if args.profile and setting == args.compile[-1]:
                    from profile_step import print_profile, profiled_steps

                    print_profile(profiled_steps(trainer, 5, 0), 5, 25, f"{name}, compile {setting}")
                trainer._stop_workers()
                del trainer
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
