"""DDP scaling: samples/s on 1 and N GPUs of one machine, efficiency = thr(N) / (N · thr(1)).

Each GPU count is a separate `torchrun --standalone --nproc-per-node N` launch of this file's worker
mode on the same shards and settings (PointNet++ at batch 32 per GPU × 20,000 points per view, the
seed's 1x step: query forward + backward, momentum key forward with cross-rank batch shuffle,
InfoNCE against a 131,072 queue, all-gather of the keys, SGD). Rank 0 reports:

- samples/s (global) over unsynchronised steps, end to end;
- a split of synchronised steps: data wait, forward (includes the all-gathers), all-gather alone
  (the batch-shuffle and queue gathers, timed inside forward), backward (includes DDP's gradient
  all-reduce), optimizer;
- peak GPU memory of rank 0.

    python3 bench/ddp_scaling.py --gpus 1 2                 # on a 2-GPU machine
    python3 bench/ddp_scaling.py --gpus 1 2 --device cpu --smoke   # gloo on CPU: checks the script only

Keep NVLink multicast off on shared hosts (the script sets NCCL_NVLS_ENABLE=0 for its workers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import torch
from pretrain_throughput import endless_batches, run_settings, write_shards

from depthcontrast import distributed, method
from depthcontrast.launch import world_from_environment
from depthcontrast.train import Trainer

TARGET_EFFICIENCY = 0.90
SMOKE = {"batch": 4, "points": 1024, "frames": 48, "steps": 3, "warmup": 1, "workers_per_gpu": 1}
SMOKE_BACKBONE = {"npoints": [128, 64, 32, 16], "head_dims": [512, 64, 32]}
SMOKE_LOSS = {"num_negatives": 64, "embedding_dim": 32}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed_all_gathers(device: torch.device, record: list[float]) -> Iterator[None]:
    """Route the method's all-gathers through a synchronised timer; adds the ms of each to `record`."""
    original: Callable[[torch.Tensor], torch.Tensor] = distributed.all_gather_no_grad

    def timed(tensor: torch.Tensor) -> torch.Tensor:
        synchronize(device)
        start = time.perf_counter()
        out = original(tensor)
        synchronize(device)
        record.append((time.perf_counter() - start) * 1000)
        return out

    distributed.all_gather_no_grad = method.all_gather_no_grad = timed
    try:
        yield
    finally:
        distributed.all_gather_no_grad = method.all_gather_no_grad = original


def measure(trainer: Trainer, steps: int, warmup: int) -> dict[str, float]:
    """Median split of synchronised steps, then global samples/s over unsynchronised steps."""
    device, module, optimizer = trainer.device, trainer.module, trainer.optimizer
    global_batch = trainer.run.batch_size * trainer.world.world_size

    batches = endless_batches(trainer)

    def train_step(views: tuple[torch.Tensor, ...]) -> None:
        with trainer.autocast:
            loss, _ = module({"point": views})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed_step(split: dict[str, list[float]]) -> None:
        tick = time.perf_counter()
        batch = next(batches)
        views = tuple(batch[key].to(device, non_blocking=True) for key in ("view_a", "view_b"))
        synchronize(device)
        marks = [tick, time.perf_counter()]
        gathers: list[float] = []
        with timed_all_gathers(device, gathers), trainer.autocast:
            loss, _ = module({"point": views})
        synchronize(device)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        synchronize(device)
        marks.append(time.perf_counter())
        optimizer.step()
        synchronize(device)
        marks.append(time.perf_counter())
        for key, (start, end) in zip(("data", "forward", "backward", "optimizer"), pairwise(marks), strict=True):
            split[key].append((end - start) * 1000)
        split["all_gather"].append(sum(gathers))

    def samples_per_s(next_views: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[float, float]:
        """Global samples/s over unsynchronised steps, and the mean ms per step spent waiting for views."""
        synchronize(device)
        if trainer.world.distributed:
            torch.distributed.barrier()
        waited, start = 0.0, time.perf_counter()
        for _ in range(steps):
            tick = time.perf_counter()
            views = next_views()
            waited += time.perf_counter() - tick
            train_step(views)
        synchronize(device)
        return steps * global_batch / (time.perf_counter() - start), waited * 1000 / steps

    def loaded_views() -> tuple[torch.Tensor, ...]:
        batch = next(batches)
        return tuple(batch[key].to(device, non_blocking=True) for key in ("view_a", "view_b"))

    split: dict[str, list[float]] = {key: [] for key in ("data", "forward", "all_gather", "backward", "optimizer")}
    for _ in range(warmup):
        train_step(loaded_views())
    for _ in range(steps):
        timed_step(split)
    result = {key: statistics.median(values) for key, values in split.items()}
    result["samples_per_s"], result["unsynced_data_ms"] = samples_per_s(loaded_views)
    cached = loaded_views()
    result["gpu_only_samples_per_s"], _ = samples_per_s(lambda: cached)
    result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return result


def worker(args: argparse.Namespace) -> None:
    """One rank of a torchrun launch: train `steps` measured steps and let rank 0 write the JSON result."""
    world = world_from_environment()
    run = run_settings(args.scale, args.precision, args.batch, args.points, args.workers)
    if args.smoke:
        run["backbone"].update(SMOKE_BACKBONE)
        run["loss"].update(SMOKE_LOSS)
    trainer = Trainer("ddp_bench", run, [Path(args.shards)], Path(args.out), world, args.device)
    try:
        result = measure(trainer, args.steps, args.warmup)
    finally:
        trainer.close()
    if world.is_main:
        result.update(gpus=world.world_size, scale=args.scale, precision=args.precision)
        Path(args.result).write_text(json.dumps(result))


def launch(gpus: int, args: argparse.Namespace, shards: Path, tmp: Path) -> dict[str, float]:
    """torchrun this file in worker mode on `gpus` processes; rank 0's measured figures."""
    result = tmp / f"result-{gpus}-{args.scale}-{args.precision}.json"
    workers = args.workers_per_gpu or max(1, args.cpus // gpus - 1)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", __file__,
        "--worker", "--shards", str(shards), "--out", str(tmp / f"out-{gpus}"), "--result", str(result),
        "--scale", str(args.scale), "--precision", args.precision, "--batch", str(args.batch),
        "--points", str(args.points), "--workers", str(workers), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--device", args.device, *(["--smoke"] if args.smoke else []),
    ]  # fmt: skip
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{gpus}-process run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(result.read_text()), "workers_per_gpu": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="process counts; the first is the base")
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=32, help="per GPU")
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--frames", type=int, default=768)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="loader workers split over GPUs")
    parser.add_argument("--workers-per-gpu", type=int, help="default: CPUs / GPUs - 1 (one core per trainer)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on CPU")
    # worker mode (set by launch)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--shards", "--out", "--result", "--precision"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.smoke:
        vars(args).update(SMOKE)
    if args.device == "cuda" and torch.cuda.device_count() < max(args.gpus):
        raise SystemExit(f"bench/ddp_scaling.py needs {max(args.gpus)} CUDA GPUs, torch sees "
                         f"{torch.cuda.device_count()}")  # fmt: skip

    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"# {datetime.date.today()} {name} | torch {torch.__version__} | Python {platform.python_version()} | "
          f"PointNet++ {args.scale}x, batch {args.batch}/GPU x {args.points} points/view | "
          f"{args.cpus} CPUs")  # fmt: skip
    print("| GPUs | precision | samples/s | efficiency | data wait ms/step | GPU-only samples/s | GPU-only efficiency "
          "| workers/GPU | data ms | forward ms | of which all-gather ms | backward ms | optimizer ms "
          "| peak GiB (rank 0) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shards = write_shards(tmp / "bench", args.frames)  # the dataset name is the folder's
        for precision in args.precisions:
            args.precision = precision
            base: dict[str, float] = {}
            for gpus in args.gpus:
                r = launch(gpus, args, shards, tmp)
                for key in ("samples_per_s", "gpu_only_samples_per_s"):
                    base.setdefault(key, r[key] / gpus)
                efficiency = r["samples_per_s"] / (gpus * base["samples_per_s"])
                gpu_only = r["gpu_only_samples_per_s"] / (gpus * base["gpu_only_samples_per_s"])
                verdict = " (target met)" if efficiency >= TARGET_EFFICIENCY else " (below target)"
                mark = "" if gpus == args.gpus[0] else verdict
                print(f"| {gpus} | {precision} | {r['samples_per_s']:.1f} | {efficiency:.1%}{mark} | "
                      f"{r['unsynced_data_ms']:.1f} | {r['gpu_only_samples_per_s']:.1f} | {gpu_only:.1%} | "
                      f"{r['workers_per_gpu']} | {r['data']:.1f} | {r['forward']:.1f} | {r['all_gather']:.1f} | "
                      f"{r['backward']:.1f} | {r['optimizer']:.1f} | {r['peak_gib']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
