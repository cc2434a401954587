"""Pretraining throughput: samples/s, step-time split, peak memory, fp32 vs bf16 (the seed's 1x setting).

Runs the real input path (HDF5 shards → seed augmentations → DataLoader workers) and the real
DepthContrast step (query forward+backward, momentum key forward, NCE against a 131,072 queue, SGD)
at batch 32 × 20,000 points per view, PointNet++ 1x. The step is split with CUDA-synchronised timers:
data wait / forward (query + key + loss) / backward / optimizer. Synchronising costs a little, so the
end-to-end samples/s is also measured on unsynchronised steps.

    python bench/pretrain_throughput.py                 # on a CUDA machine
    python bench/pretrain_throughput.py --scales 1 2 --precisions fp32 bf16 --steps 30

Anchor (FINDINGS, same H100 model): the seed's own implementation, 1x fp32, 166 samples/s, 34.7 GiB.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from depthcontrast.data.records import Sample
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.launch import WorldInfo
from depthcontrast.train import Trainer

SEED_SAMPLES_PER_S = {1: 166.0, 2: 109.0, 3: 77.0}
SEED_PEAK_GIB = {1: 34.7, 2: 65.1, 3: 59.8}
FRAME_POINTS = 50_000  # the seed's ScanNet frames


def synthetic_room_frame(rng: np.random.Generator, points: int) -> np.ndarray:
    """A depth-frame-like cloud: floor, two walls and a few boxes, mm-quantised, in metres."""
    parts = [
        np.c_[rng.uniform(-2, 2, (points // 3, 2)), np.zeros(points // 3)],
        np.c_[rng.uniform(-2, 2, points // 4), np.full(points // 4, 2.0), rng.uniform(0, 2.5, points // 4)],
        np.c_[np.full(points // 4, -2.0), rng.uniform(-2, 2, points // 4), rng.uniform(0, 2.5, points // 4)],
    ]
    rest = points - sum(len(p) for p in parts)
    centres = rng.uniform(-1.5, 1.5, (4, 3)) * [1, 1, 0] + [0, 0, 0.4]
    box = centres[rng.integers(0, 4, rest)] + rng.uniform(-0.4, 0.4, (rest, 3))
    xyz = np.concatenate([*parts, box]) + rng.normal(0, 0.002, (points, 3))
    return np.round(xyz, 3).astype(np.float32)


def room_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    return Sample(sample_id=sample_id, points=synthetic_room_frame(rng, FRAME_POINTS))


def write_shards(
    folder: Path, frames: int, make_sample: Callable[[np.random.Generator, str], Sample] = room_sample
) -> Path:
    """`frames` samples of `make_sample` (seeded generator, sample id) as shards of dataset `folder.name`."""
    rng = np.random.default_rng(0)
    with ShardWriter(
        folder, dataset=folder.name, source="synthetic", params={}, samples_per_shard=64,
        compression="none", compression_level=0, xyz_quantum_m=0.001,
    ) as writer:  # fmt: skip
        for i in range(frames):
            writer.add(make_sample(rng, f"{folder.name}/{i:05d}"))
    return folder


def run_settings(
    scale: int, precision: str, batch: int, points: int, workers: int, compiled: bool = True, augment_on: str = "cpu"
) -> dict:
    return {
        "datasets": ["bench"], "representations": ["point"],
        "backbone": {"name": "pointnet2_ssg", "scale": scale, "npoints": [2048, 1024, 512, 256], "head_dims": None},
        "augmentations": "indoor", "augmentation_overrides": {}, "points_per_view": points,
        "batch_size": batch, "epochs": 1000,
        "optimizer": {"name": "sgd", "lr": 0.12, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False},
        "schedule": {"name": "cosine", "final_lr": 0.00012, "warmup_epochs": 0, "per_step": False},
        "loss": {"temperature": 0.1, "num_negatives": 131072, "embedding_dim": 128, "momentum": 0.999,
                 "loss_types": None, "within_format_weights": None, "across_format_weights": None},
        "precision": precision, "compile": compiled, "augment_on": augment_on, "grad_clip_norm": None,
        "checkpoint_every_epochs": 10,
        "num_workers": workers, "verify_shards": True, "seed": 0, "deterministic": False, "log_every_steps": 10,
    }  # fmt: skip


def endless_batches(trainer: Trainer) -> Iterator[dict]:
    """The trainer's loader over all its epochs, one pass, advancing its batch counter (which seeds the GPU
    augmentations' generator)."""
    for batch in trainer._loader():
        yield batch
        trainer.batch += 1


def train_step(trainer: Trainer, batch: dict) -> None:
    """One DepthContrast step on a loaded batch, unsynchronised."""
    inputs = trainer._inputs(batch)
    with trainer.autocast:
        loss, _ = trainer.module(inputs)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()


def measure(trainer: Trainer, steps: int, warmup: int) -> dict[str, float]:
    """Split-timed steps, then unsynchronised steps for end-to-end throughput."""
    device, model, optimizer = trainer.device, trainer.module, trainer.optimizer
    batches = endless_batches(trainer)
    split = {"data": [], "forward": [], "backward": [], "optimizer": []}

    def timed_step(record: bool) -> None:
        tick = time.perf_counter()
        inputs = trainer._inputs(next(batches))  # with augment_on: gpu, the augmentations count as data time
        torch.cuda.synchronize()
        t_data = time.perf_counter()
        with trainer.autocast:
            loss, _ = model(inputs)
        torch.cuda.synchronize()
        t_fwd = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.cuda.synchronize()
        t_bwd = time.perf_counter()
        optimizer.step()
        torch.cuda.synchronize()
        t_opt = time.perf_counter()
        if record:
            for key, value in zip(split, (t_data - tick, t_fwd - t_data, t_bwd - t_fwd, t_opt - t_bwd), strict=True):
                value_ms = value * 1000
                split[key].append(value_ms)

    for i in range(warmup + steps):
        timed_step(record=i >= warmup)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(trainer, next(batches))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    data_start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    data_only = steps * trainer.run.batch_size / (time.perf_counter() - data_start)
    result = {key: statistics.median(values) for key, values in split.items()}
    result["data_only_samples_per_s"] = data_only
    result["samples_per_s"] = steps * trainer.run.batch_size / elapsed
    result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", nargs="+", choices=["on", "off"], default=["on"],
                        help="the run's `compile` setting(s) to measure")  # fmt: skip
    parser.add_argument("--augment-on", nargs="+", choices=["cpu", "gpu"], default=["cpu"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/pretrain_throughput.py needs a CUDA GPU")

    print(f"# {datetime.date.today()} {torch.cuda.get_device_name()} | torch {torch.__version__} | "
          f"Python {platform.python_version()} | batch {args.batch} x {args.points} points/view, "
          f"{args.workers} loader workers")  # fmt: skip
    print("| width | precision | compile | augment | samples/s | vs seed | loader alone samples/s | data wait ms "
          "| forward ms | bwd ms "
          "| optimizer ms | peak GiB | seed peak GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp) / "bench", args.frames)
        for scale in args.scales:
            for precision in args.precisions:
                for compiled in args.compile:
                    for augment_on in args.augment_on:
                        measure_row(args, shards, Path(tmp) / "out", scale, precision, compiled == "on", augment_on)


def measure_row(
    args: argparse.Namespace, shards: Path, out: Path, scale: int, precision: str, compiled: bool, augment_on: str
) -> None:
    """One table row: a fresh trainer with these settings, measured."""
    torch.cuda.reset_peak_memory_stats()
    run = run_settings(scale, precision, args.batch, args.points, args.workers, compiled, augment_on)
    settings = f"{scale}x | {precision} | {'on' if compiled else 'off'} | {augment_on}"
    trainer = Trainer("bench", run, [shards], out, WorldInfo(0, 1, 0, None), "cuda")
    try:
        r = measure(trainer, args.steps, args.warmup)
    except torch.OutOfMemoryError:
        print(f"| {settings} | out of memory at batch {args.batch} | | | | | | | | |", flush=True)
        return
    finally:
        trainer._stop_workers()
        del trainer
        torch.cuda.empty_cache()
    seed = SEED_SAMPLES_PER_S.get(scale)
    ratio = f"{r['samples_per_s'] / seed:.2f}x" if seed else "-"
    print(f"| {settings} | {r['samples_per_s']:.1f} | {ratio} | "
          f"{r['data_only_samples_per_s']:.0f} | {r['data']:.1f} | "
          f"{r['forward']:.1f} | {r['backward']:.1f} | {r['optimizer']:.1f} | {r['peak_gib']:.1f} | "
          f"{SEED_PEAK_GIB.get(scale, '-')} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
