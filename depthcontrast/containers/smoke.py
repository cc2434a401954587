"""The images' smoke test: import the stack, then one forward/backward of its voxel encoder.

    python -m depthcontrast.containers.smoke --stack spconv|minkowski --device cpu|cuda|import

`import` (what a build runs: no GPU then) stops after the imports; `cpu`/`cuda` also train one step on a random
cloud and check that the embedding is finite and every parameter with a gradient got a finite, non-zero one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

STACK_MODULES = {"spconv": "spconv.pytorch", "minkowski": "MinkowskiEngine"}


def _voxel_batch(stack: str, device: str, points: int, seed: int = 0):
    import numpy as np
    import torch

    from depthcontrast.data.voxelize import VoxelGrid, collate_voxels, voxelize

    rng = np.random.default_rng(seed)
    if stack == "spconv":  # a LiDAR-style crop: the original's voxel size and z range, a 10 m square
        grid = VoxelGrid(point_range=(0.0, -5.0, -3.0, 10.0, 5.0, 3.0))
    else:  # an indoor-style room: 5 cm voxels, one point each
        grid = VoxelGrid(
            voxel_size=(0.05, 0.05, 0.05), point_range=(0.0, 0.0, 0.0, 4.0, 4.0, 3.0), max_points_per_voxel=1
        )
    low, high = np.asarray(grid.point_range[:3]), np.asarray(grid.point_range[3:])
    clouds = [voxelize(rng.uniform(low, high, (points, 3)).astype(np.float32), grid) for _ in range(2)]
    batch = collate_voxels(clouds)
    batch["features"], batch["coords"] = batch["features"].to(device), batch["coords"].to(device)
    return grid, batch, torch


def _encoder(stack: str, grid):
    if stack == "spconv":
        from depthcontrast.models.spconv_unet import UNetV2Encoder

        return UNetV2Encoder(3, grid.sparse_shape)
    from depthcontrast.models.minkunet_me import MinkUNet34MEEncoder

    return MinkUNet34MEEncoder(1)


def train_step(stack: str, device: str, points: int) -> str:
    grid, batch, torch = _voxel_batch(stack, device, points)
    torch.manual_seed(0)
    model = _encoder(stack, grid).to(device)
    start = time.monotonic()
    out = model(batch)
    loss = out.square().mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.monotonic() - start
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if out.shape[0] != 2 or not torch.isfinite(out).all():
        raise SystemExit(f"smoke test: {stack} on {device}: embedding {tuple(out.shape)} not finite / not 2 rows")
    if not grads or not all(torch.isfinite(g).all() for g in grads) or all(g.abs().sum() == 0 for g in grads):
        raise SystemExit(f"smoke test: {stack} on {device}: gradients missing, zero or not finite")
    voxels = len(batch["coords"])
    return f"{voxels} voxels, forward+backward {seconds:.2f} s, embedding {tuple(out.shape)}, {len(grads)} gradients"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depthcontrast.containers.smoke", description=__doc__)
    parser.add_argument("--stack", choices=sorted(STACK_MODULES), required=True)
    parser.add_argument("--device", choices=["cpu", "cuda", "import"], default="cpu")
    parser.add_argument("--points", type=int, default=2000, help="points per cloud (two clouds)")
    args = parser.parse_args(argv)
    import torch

    module = importlib.import_module(STACK_MODULES[args.stack])
    import depthcontrast  # noqa: F401  the package itself

    stack_version = getattr(module, "__version__", None) or getattr(
        sys.modules[module.__name__.split(".")[0]], "__version__", "?"
    )
    print(f"[smoke] torch {torch.__version__} (CUDA {torch.version.cuda}), {args.stack} {stack_version}", flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "smoke test: --device cuda but no GPU is visible (apptainer: --nv; podman: --device nvidia.com/gpu=all)"
        )
    if args.device != "import":
        print(f"[smoke] {args.stack} on {args.device}: {train_step(args.stack, args.device, args.points)}", flush=True)
    print("[smoke] ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
