"""PointNet++ point operations: sampling, ball query, grouping and three-NN interpolation.

Each op takes batched tensors and has one meaning on CPU and CUDA. CUDA tensors go to the Triton
kernels of `ops_triton` (sampling, ball query, three-NN) when Triton imports; everything else, and any call
with `backend="torch"` or with the environment variable DEPTHCONTRAST_POINT_OPS=torch, runs as
vectorised PyTorch. Both paths compute squared distances as `dx*dx + dy*dy + dz*dz` in float32,
rounded after each operation, so they choose the same indices bit for bit.

Semantics (those of the VoteNet ops the original uses, except where stated):
- sampling starts at `start_index` and takes, at each step, the point farthest from those already
  taken (largest minimum squared distance); ties go to the lowest index. (The original's CUDA kernel
  also skips points within 1e-3 of the origin; we do not.)
- ball query returns, per centre, the first `nsample` indices in index order with squared distance
  strictly below radius**2, padded with the first of them. An empty ball (impossible when centres are
  points of the cloud) is all index 0, as in the original's kernel.
- interpolation weights the three nearest known points by 1 / (distance + 1e-8), normalised.
Indices carry no gradient; gradients flow to grouped and interpolated features.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from types import ModuleType

import torch

BACKEND_ENV = "DEPTHCONTRAST_POINT_OPS"
BACKENDS = ("auto", "torch", "triton")
INTERPOLATION_EPS = 1e-8  # added to the Euclidean distance, as in the original
NUM_NEIGHBOURS = 3
# Elements of one [B, centres, N] distance block in the torch path: bounds its memory.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


@functools.lru_cache(maxsize=1)
def _triton_module() -> ModuleType | None:
    """The Triton kernels, or None where Triton (or a GPU build of it) is not importable."""
    try:
        from depthcontrast.models import ops_triton
    except ImportError:
        return None
    return ops_triton


def resolve_backend(tensor: torch.Tensor, backend: str = "auto") -> str:
    """'triton' or 'torch' for `tensor`: the argument, else $DEPTHCONTRAST_POINT_OPS, else by device."""
    choice = backend if backend != "auto" else os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"point-op backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "torch":
        return "torch"
    usable = tensor.is_cuda and _triton_module() is not None
    if choice == "triton" and not usable:
        raise ValueError(
            f"point-op backend 'triton' needs a CUDA tensor and an importable Triton (tensor on {tensor.device})"
        )
    return "triton" if usable else "torch"


def _check_points(name: str, xyz: torch.Tensor) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3], got {list(xyz.shape)}")


def _chunk_rows(xyz: torch.Tensor, rows: int) -> int:
    """How many query rows of a [B, rows, N] distance block fit in CHUNK_ELEMENTS."""
    budget = CHUNK_ELEMENTS.get(xyz.device.type, CHUNK_ELEMENTS["cpu"])
    return max(1, min(rows, budget // max(1, xyz.shape[0] * xyz.shape[1])))


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[B, M, N] squared distances from centres [B, M, 3] to points [B, N, 3], summed x, y, z in order."""
    dx, dy, dz = (centres[:, :, None, axis] - points[:, None, :, axis] for axis in range(3))
    return dx * dx + dy * dy + dz * dz


def farthest_point_sample(xyz: torch.Tensor, npoint: int, start_index: int = 0, backend: str = "auto") -> torch.Tensor:
    """Indices int64 [B, npoint] of iterative farthest-point sampling of xyz [B, N, 3]."""
    _check_points("xyz", xyz)
    n = xyz.shape[1]
    if not 0 < npoint <= n:
        raise ValueError(f"cannot sample {npoint} points from clouds of {n} points")
    if not 0 <= start_index < n:
        raise ValueError(f"start_index {start_index} is outside a cloud of {n} points")
    points = xyz.detach().float().contiguous()
    if resolve_backend(points, backend) == "triton":
        return _triton_module().farthest_point_sample(points, npoint, start_index)
    return _farthest_point_sample_torch(points, npoint, start_index)


def _farthest_point_sample_torch(xyz: torch.Tensor, npoint: int, start_index: int) -> torch.Tensor:
    batch, n, _ = xyz.shape
    rows = torch.arange(batch, device=xyz.device)
    out = torch.empty(batch, npoint, dtype=torch.long, device=xyz.device)
    nearest = torch.full((batch, n), float("inf"), device=xyz.device)
    farthest = torch.full((batch,), start_index, dtype=torch.long, device=xyz.device)
    x, y, z = xyz.unbind(-1)
    for i in range(npoint):
        out[:, i] = farthest
        centre = xyz[rows, farthest]
        dx, dy, dz = x - centre[:, 0:1], y - centre[:, 1:2], z - centre[:, 2:3]
        nearest = torch.minimum(nearest, dx * dx + dy * dy + dz * dz)
        farthest = nearest.argmax(dim=1)  # first maximum: ties go to the lowest index
    return out


def ball_query(
    xyz: torch.Tensor, centres: torch.Tensor, radius: float, nsample: int, backend: str = "auto"
) -> torch.Tensor:
    """Indices int64 [B, M, nsample] of points of xyz [B, N, 3] within `radius` of each centre [B, M, 3]."""
    return ball_query_scales(xyz, centres, [radius], [nsample], backend)[0]


def ball_query_scales(
    xyz: torch.Tensor, centres: torch.Tensor, radii: Sequence[float], nsamples: Sequence[int], backend: str = "auto"
) -> list[torch.Tensor]:
    """`ball_query` for each (radius, nsample) about the same centres, as multi-scale grouping asks; the Triton
    path scans the cloud once for each pair of balls."""
    _check_points("xyz", xyz)
    _check_points("centres", centres)
    if xyz.shape[0] != centres.shape[0]:
        raise ValueError(f"xyz and centres have different batch sizes: {xyz.shape[0]} vs {centres.shape[0]}")
    for radius, nsample in zip(radii, nsamples, strict=True):
        if radius <= 0 or nsample <= 0:
            raise ValueError(f"ball query needs radius > 0 and nsample > 0, got {radius} and {nsample}")
    points = xyz.detach().float().contiguous()
    queries = centres.detach().float().contiguous()
    # both paths compare in float32
    balls = [(float(torch.tensor(r * r, dtype=torch.float32)), k) for r, k in zip(radii, nsamples, strict=True)]
    if resolve_backend(points, backend) == "triton":
        module = _triton_module()
        return [
            idx
            for begin in range(0, len(balls), 2)
            for idx in module.ball_query_pair(points, queries, balls[begin : begin + 2])
        ]
    return [_ball_query_torch(points, queries, radius2, nsample) for radius2, nsample in balls]


def _ball_query_torch(xyz: torch.Tensor, centres: torch.Tensor, radius2: float, nsample: int) -> torch.Tensor:
    n = xyz.shape[1]
    take = min(nsample, n)
    order = torch.arange(n, device=xyz.device)
    parts = []
    step = _chunk_rows(xyz, centres.shape[1])
    for begin in range(0, centres.shape[1], step):
        inside = squared_distances(xyz, centres[:, begin : begin + step]) < radius2
        keys = torch.where(inside, order, n)  # outside points sort after every inside one
        first = torch.topk(keys, take, dim=-1, largest=False, sorted=True).values
        parts.append(first)
    found = torch.cat(parts, dim=1)
    if take < nsample:
        found = torch.cat([found, found.new_full((*found.shape[:2], nsample - take), n)], dim=-1)
    pad = torch.where(found[..., :1] < n, found[..., :1], 0)
    return torch.where(found < n, found, pad)


def group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather features [B, C, N] at idx [B, M, K] into [B, C, M, K]; differentiable in features."""
    if features.dim() != 3 or idx.dim() != 3 or features.shape[0] != idx.shape[0]:
        raise ValueError(
            f"group needs features [B, C, N] and idx [B, M, K], got {list(features.shape)} and {list(idx.shape)}"
        )
    batch, channels, _ = features.shape
    _, m, k = idx.shape
    flat = idx.reshape(batch, 1, m * k).expand(batch, channels, m * k)
    return torch.gather(features, 2, flat).view(batch, channels, m, k)


def group_float32(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`group` with the gather done in at least float32, the result in the features' dtype.

    The same values; what changes for bf16 or fp16 features is the backward, a scatter-add onto the N points: in
    float32 it is one native atomic add per element, in bfloat16 a compare-and-swap loop that rounds every add.
    """
    if features.dtype not in (torch.bfloat16, torch.float16):
        return group(features, idx)
    return group(features.float(), idx).to(features.dtype)


def gather_points(xyz: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of xyz [B, N, D] at idx [B, M]: [B, M, D]."""
    return torch.gather(xyz, 1, idx[..., None].expand(-1, -1, xyz.shape[-1]))


def three_nn(unknown: torch.Tensor, known: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Distances [B, n, 3] and int64 indices [B, n, 3] of the three known points nearest each unknown, nearest
    first (among equal distances the order may differ between backends; the distances do not)."""
    _check_points("unknown", unknown)
    _check_points("known", known)
    if known.shape[1] < NUM_NEIGHBOURS:
        raise ValueError(f"three-NN interpolation needs at least 3 known points, got {known.shape[1]}")
    points = known.detach().float().contiguous()
    queries = unknown.detach().float().contiguous()
    if resolve_backend(points, backend) == "triton":
        return _triton_module().three_nn(queries, points)
    dists, idxs = [], []
    step = _chunk_rows(points, queries.shape[1])
    for begin in range(0, queries.shape[1], step):
        d2 = squared_distances(points, queries[:, begin : begin + step])
        values, indices = torch.topk(d2, NUM_NEIGHBOURS, dim=-1, largest=False, sorted=True)
        dists.append(values.sqrt())
        idxs.append(indices)
    return torch.cat(dists, dim=1), torch.cat(idxs, dim=1)


def check_known_features(known: torch.Tensor, known_feats: torch.Tensor) -> None:
    """ValueError unless known_feats is [B, C, m] for the m points of known [B, m, 3]."""
    if known_feats.dim() != 3 or known_feats.shape[2] != known.shape[1]:
        raise ValueError(
            f"known_feats must be [B, C, {known.shape[1]}] for {known.shape[1]} known points, "
            f"got {list(known_feats.shape)}"
        )


def interpolate(dist: torch.Tensor, idx: torch.Tensor, known_feats: torch.Tensor) -> torch.Tensor:
    """Features [B, C, n] from known_feats [B, C, m], weighted by 1 / distance over `three_nn`'s neighbours."""
    inverse = 1.0 / (dist + INTERPOLATION_EPS)
    weights = (inverse / inverse.sum(dim=-1, keepdim=True)).to(known_feats.dtype)
    neighbours = group_float32(known_feats, idx)  # [B, C, n, 3]
    return (neighbours * weights[:, None]).sum(dim=-1)


def three_nn_interpolate(
    unknown: torch.Tensor, known: torch.Tensor, known_feats: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Features [B, C, n] at unknown [B, n, 3], inverse-distance weighted from known [B, m, 3] / [B, C, m]."""
    check_known_features(known, known_feats)
    return interpolate(*three_nn(unknown, known, backend), known_feats)
