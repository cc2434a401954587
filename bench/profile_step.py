"""Where the PointNet++ DepthContrast step's GPU time goes, by kind of kernel (torch.profiler).

The same step and input path as bench/pretrain_throughput.py (HDF5 shards → the original's augmentations →
DataLoader; query forward + backward, momentum key forward, InfoNCE against a 131,072 queue, SGD, momentum update,
enqueue), batch 32 × 20,000 points per view. After the warm-up, `--steps` steps run under the profiler. Each CUDA
kernel's time is summed into a category by its name (FPS, ball query, gathers/scatters of the grouping and its
backward, GEMMs and convolutions of the shared MLPs / FP MLPs / head / NCE logits, BatchNorm, ReLU, max-pool,
FP interpolation, copies and casts, the loss's softmax, the optimizer), and the top kernels are listed so the
categories can be checked by eye.

    python bench/profile_step.py --precision bf16 --steps 5
"""

from __future__ import annotations

import argparse
import datetime
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from pretrain_throughput import (  # bench/ is on sys.path when run as a script
    endless_batches,
    run_settings,
    train_step,
    write_shards,
)
from torch.profiler import ProfilerActivity, profile

from depthcontrast.launch import WorldInfo
from depthcontrast.train import Trainer

# first match wins: (category, regex over the CUDA kernel's name)
CATEGORIES = (
    ("sparse conv (spconv, MinkowskiEngine)", r"spconv|tv::|cumm|implicit_gemm|[Ii]ndice|minkowski|Minkowski"),
    ("FPS", r"_fps_kernel|furthest|farthest"),
    ("ball query", r"_ball_query_kernel|ball_query"),
    ("FP interpolation (three_nn + weights)", r"three_nn|topk|bitonic|sort|radix"),
    ("BatchNorm", r"batch_norm|bn_fw|bn_bw|welford|cudnn::bn"),
    ("max-pool / max reductions", r"max_pool|MaxOps|max_kernel|amax|reduce_kernel<.*Max"),
    ("gathers / scatters (grouping, FP, their backward)", r"index|gather|scatter|take|embedding"),
    ("GEMM / conv (shared MLPs, FP MLPs, head, NCE logits)", r"gemm|xmma|cutlass|conv|wgrad|dgrad|sm90|sm80|cublas"),
    ("ReLU", r"threshold|relu|clamp"),
    ("softmax / loss", r"softmax|nll|cross_entropy|log_softmax"),
    ("optimizer (SGD, momentum update)", r"multi_tensor|foreach|sgd|lerp"),
    ("copies / casts / cat", r"copy|cat|Cat|to_copy|direct_copy|fill"),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, name):
            return label
    return "other elementwise / misc"


def profiled_steps(trainer: Trainer, steps: int, warmup: int) -> profile:
    batches = endless_batches(trainer)
    for _ in range(warmup):
        train_step(trainer, next(batches))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            train_step(trainer, next(batches))
        torch.cuda.synchronize()
    return prof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--compile", choices=["on", "off"], default="on", help="the run's `compile` setting")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/profile_step.py needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp) / "bench", args.frames)
        run = run_settings(args.scale, args.precision, args.batch, args.points, args.workers, args.compile == "on")
        trainer = Trainer("bench", run, [shards], Path(tmp) / "out", WorldInfo(0, 1, 0, None), "cuda")
        prof = profiled_steps(trainer, args.steps, args.warmup)
    print_profile(prof, args.steps, args.top, f"PointNet++ {args.scale}x {args.precision}, batch {args.batch} x "
                  f"{args.points} points/view")  # fmt: skip


def print_profile(prof: profile, steps: int, top: int, what: str) -> None:
    """The profile's GPU kernel time per step by category, and its top kernels, as markdown tables."""
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.self_device_time_total > 0:
            kernels[event.key] += event.self_device_time_total / 1000 / steps  # ms per step
    total = sum(kernels.values())
    by_category: dict[str, float] = defaultdict(float)
    for name, ms in kernels.items():
        by_category[category(name)] += ms
    print(f"# {datetime.date.today()} {torch.cuda.get_device_name()} | torch {torch.__version__} | {what}, "
          f"{steps} profiled steps | GPU kernel time {total:.1f} ms per step")  # fmt: skip
    print("| category | ms per step | share |\n|---|---|---|")
    for label, ms in sorted(by_category.items(), key=lambda item: -item[1]):
        print(f"| {label} | {ms:.1f} | {100 * ms / total:.1f}% |")
    print(f"\n| top {top} kernels | category | ms per step |\n|---|---|---|")
    for name, ms in sorted(kernels.items(), key=lambda item: -item[1])[:top]:
        print(f"| `{name[:90]}` | {category(name)} | {ms:.2f} |")


if __name__ == "__main__":
    main()
