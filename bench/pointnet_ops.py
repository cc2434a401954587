"""PointNet++ point-op benchmark on one CUDA GPU: our Triton kernels vs the plain-torch path.

Prints, for the seed's pretraining shapes (32 clouds x 20,000 points): farthest-point sampling
20,000 -> 2,048, the sa1 ball query (2,048 centres, radius 0.2, 64 samples), and a whole 1x
PointNet++ forward (train mode, with autograd, as the query encoder runs) and forward+backward, in
float32 and under bfloat16 autocast, with peak memory. Each figure is the median of REPEATS runs
after WARMUP. The ratio it exists for: torch path time / Triton path time, and Triton vs the seed's
own CUDA ops (FINDINGS.md: FPS 15.8 ms, 1x forward 64.9 ms on an H100, fp32).

Clouds are synthetic rooms (floor, four walls, box-shaped furniture; 5 mm noise) so that ball
occupancy is that of indoor scans rather than of a uniform cube.

    PYTHONPATH=. python3 bench/pointnet_ops.py [--batch 32] [--points 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
from collections.abc import Callable

import torch

from depthcontrast.models import ops
from depthcontrast.models.pointnet2 import SA_NPOINTS, SA_NSAMPLES, SA_RADII, PointNet2SSG

WARMUP = 2
REPEATS = 5
SLOW_REPEATS = 3  # the torch path's forward takes about a second
ROOM_SIZE_M = (6.0, 5.0, 2.8)
NOISE_M = 0.005
FURNITURE_BOXES = 4
SURFACE_SHARES = (0.35, 0.45, 0.20)  # floor, walls, furniture
SEED_FPS_MS = 15.8  # FINDINGS.md, seed's CUDA op, H100, 32 x 20,000 -> 2,048
SEED_FORWARD_MS = 64.9  # FINDINGS.md, seed's 1x forward, H100, fp32, batch 32 x 20,000


def synthetic_rooms(batch: int, n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """[batch, n, 3] points on the floor, walls and box furniture of a room, with sensor noise."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor(ROOM_SIZE_M)
    counts = [int(share * n) for share in SURFACE_SHARES]
    counts[0] += n - sum(counts)
    floor = torch.rand(batch, counts[0], 3, generator=g) * size
    floor[..., 2] = 0
    walls = torch.rand(batch, counts[1], 3, generator=g) * size
    axis = torch.randint(0, 2, (batch, counts[1]), generator=g)  # wall normal along x or y
    side = torch.randint(0, 2, (batch, counts[1]), generator=g).float()
    walls[..., 0] = torch.where(axis == 0, side * size[0], walls[..., 0])
    walls[..., 1] = torch.where(axis == 1, side * size[1], walls[..., 1])
    lo = torch.rand(batch, FURNITURE_BOXES, 3, generator=g) * size * torch.tensor([0.8, 0.8, 0.0])
    extent = 0.3 + torch.rand(batch, FURNITURE_BOXES, 3, generator=g) * torch.tensor([1.2, 1.2, 0.8])
    box = torch.randint(0, FURNITURE_BOXES, (batch, counts[2]), generator=g)
    pick = box[..., None].expand(-1, -1, 3)
    furniture = torch.gather(lo, 1, pick) + torch.rand(batch, counts[2], 3, generator=g) * torch.gather(extent, 1, pick)
    furniture[..., 2] = torch.gather(lo + extent, 1, pick)[..., 2]  # table tops
    cloud = torch.cat([floor, walls, furniture], dim=1)
    cloud = cloud + torch.randn(cloud.shape, generator=g) * NOISE_M
    order = torch.argsort(torch.rand(batch, n, generator=g), dim=1)  # scans are not sorted by surface
    return torch.gather(cloud, 1, order[..., None].expand(-1, -1, 3)).to(device)


def time_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of fn on the GPU, in milliseconds."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def report(name: str, torch_ms: float | None, triton_ms: float, seed_ms: float | None = None) -> None:
    line = f"{name:<44} triton {triton_ms:9.2f} ms"
    if torch_ms is not None:
        line += f" | torch {torch_ms:9.2f} ms | torch/triton {torch_ms / triton_ms:6.1f}x"
    if seed_ms is not None:
        line += f" | seed CUDA {seed_ms:.1f} ms -> seed/triton {seed_ms / triton_ms:4.2f}x"
    print(line, flush=True)


def bench_ops(clouds: torch.Tensor) -> None:
    npoint, radius, nsample = SA_NPOINTS[0], SA_RADII[0], SA_NSAMPLES[0]
    fps = {b: time_ms(lambda b=b: ops.farthest_point_sample(clouds, npoint, backend=b)) for b in ("torch", "triton")}
    report(f"FPS {clouds.shape[1]} -> {npoint} x {clouds.shape[0]}", fps["torch"], fps["triton"], SEED_FPS_MS)
    centres = ops.gather_points(clouds, ops.farthest_point_sample(clouds, npoint))
    idx = ops.ball_query(clouds, centres, radius, nsample)
    filled = (idx != idx[..., :1]).sum(-1).add(1).float().mean().item()
    bq = {
        b: time_ms(lambda b=b: ops.ball_query(clouds, centres, radius, nsample, backend=b)) for b in ("torch", "triton")
    }
    report(f"ball query r={radius} k={nsample} ({filled:.1f} distinct/ball)", bq["torch"], bq["triton"])
    nn = {b: time_ms(lambda b=b: ops.three_nn(clouds, centres, backend=b)) for b in ("torch", "triton")}
    report(f"three-NN {clouds.shape[1]} <- {npoint} x {clouds.shape[0]}", nn["torch"], nn["triton"])


def bench_model(clouds: torch.Tensor) -> None:
    models = {b: PointNet2SSG(scale=1, backend=b).cuda().train() for b in ("torch", "triton")}
    for dtype in (torch.float32, torch.bfloat16):
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
        label = "fp32" if dtype == torch.float32 else "bf16 autocast"

        def forward(backend: str, autocast=autocast) -> torch.Tensor:
            with autocast:
                return models[backend](clouds)["fp2_features"]

        def step(autocast=autocast) -> None:
            with autocast:
                out = models["triton"](clouds)["fp2_features"]
            out.float().max(dim=2).values.sum().backward()

        torch_ms = time_ms(lambda: forward("torch"), SLOW_REPEATS)
        triton_ms = time_ms(lambda: forward("triton"))
        seed = SEED_FORWARD_MS if dtype == torch.float32 else None
        report(f"1x forward, {label}", torch_ms, triton_ms, seed)
        torch.cuda.reset_peak_memory_stats()
        step_ms = time_ms(step)
        peak = torch.cuda.max_memory_allocated() / 2**30
        report(f"1x forward+backward, {label} (peak {peak:.1f} GiB)", None, step_ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=20_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    import triton

    print(f"command: {' '.join(sys.argv)}")
    print(
        f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} "
        f"| python {platform.python_version()}"
    )
    print(
        f"clouds: {args.batch} x {args.points} synthetic room points; "
        f"median of {REPEATS} runs after {WARMUP} warm-up runs"
    )
    clouds = synthetic_rooms(args.batch, args.points, torch.device("cuda"))
    bench_ops(clouds)
    bench_model(clouds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
