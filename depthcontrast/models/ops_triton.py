"""Triton kernels for farthest-point sampling, ball query and three-NN on CUDA; `ops` imports this lazily.

Inputs are float32 and contiguous (ops.py sees to it). Kernels read coordinates as three planes
(x, y and z of a cloud each contiguous) so that loads coalesce. Floating-point fusion is off: each
multiply and add is rounded on its own, as in the torch path, so both choose the same indices.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch shapes measured best in a sweep on an H100 (32 uniform clouds of 20,000 points, 2026-11-24):
# sampling 2,048 points a step over 32 warps, 7.7 ms (4,096 over 16 warps 8.0 ms; 2,048 over
# 16 warps 12.8 ms); ball query 512 points a step over 2 warps, 3.9 ms (1,024 over 4 warps 4.4 ms).
FPS_MAX_BLOCK = 2048
FPS_POINTS_PER_THREAD = 2
FPS_MAX_WARPS = 32
BALL_QUERY_BLOCK = 512
BALL_QUERY_WARPS = 2
THREE_NN_QUERIES = 128  # unknown points per program, one per lane; each program scans every known point
THREE_NN_WARPS = 4
MIN_BLOCK = 16
THREADS_PER_WARP = 32
NO_FUSION = {"enable_fp_fusion": False}


def _block(n: int, cap: int) -> int:
    return max(MIN_BLOCK, min(cap, triton.next_power_of_2(n)))


def _fps_warps(block: int) -> int:
    return max(1, min(FPS_MAX_WARPS, block // (THREADS_PER_WARP * FPS_POINTS_PER_THREAD)))


def _planes(xyz: torch.Tensor) -> torch.Tensor:
    """[B, N, 3] -> [B, 3, N] contiguous."""
    return xyz.transpose(1, 2).contiguous()


@triton.jit
def _fps_kernel(planes_ptr, nearest_ptr, out_ptr, n, npoint, start_index, BLOCK: tl.constexpr):
    # One program per cloud. nearest[b, j] holds point j's squared distance to the nearest chosen
    # point; each lane keeps its own running maximum (the lowest index among equals, since lanes
    # scan in increasing index order with a strict comparison), and two reductions at the end of a
    # step pick the global maximum with the lowest index.
    cloud = tl.program_id(0).to(tl.int64)
    x_ptr = planes_ptr + cloud * 3 * n
    y_ptr = x_ptr + n
    z_ptr = y_ptr + n
    near_ptr = nearest_ptr + cloud * n
    out = out_ptr + cloud * npoint
    lanes = tl.arange(0, BLOCK)
    farthest = tl.zeros([], tl.int32) + start_index
    for i in range(npoint):
        tl.store(out + i, farthest.to(tl.int64))
        cx = tl.load(x_ptr + farthest)
        cy = tl.load(y_ptr + farthest)
        cz = tl.load(z_ptr + farthest)
        best = tl.full([BLOCK], -1.0, tl.float32)
        best_idx = tl.zeros([BLOCK], tl.int32)
        for begin in range(0, n, BLOCK):
            offs = begin + lanes
            valid = offs < n
            dx = tl.load(x_ptr + offs, mask=valid, other=0.0) - cx
            dy = tl.load(y_ptr + offs, mask=valid, other=0.0) - cy
            dz = tl.load(z_ptr + offs, mask=valid, other=0.0) - cz
            d = dx * dx + dy * dy + dz * dz
            old = tl.load(near_ptr + offs, mask=valid, other=0.0)
            closer = valid & (d < old)  # late in sampling few points move closer: few stores
            tl.store(near_ptr + offs, d, mask=closer)
            near = tl.where(closer, d, old)
            near = tl.where(valid, near, -1.0)
            better = near > best
            best = tl.where(better, near, best)
            best_idx = tl.where(better, offs, best_idx)
        top = tl.max(best, axis=0)
        farthest = tl.min(tl.where(best == top, best_idx, n), axis=0)


@triton.jit
def _take_inside(d, offs, valid, radius2, found, first, out, nsample):
    # The points of this block inside the ball, written at their rank among those found so far; the updated
    # count and the lowest index found. Blocks without a hit (most, in a sparse cloud) skip the prefix sum.
    inside = (d < radius2) & valid
    hits = inside.to(tl.int32)
    count = tl.sum(hits, axis=0)
    if count > 0:
        slot = found + tl.cumsum(hits, axis=0) - 1
        tl.store(out + slot, offs.to(tl.int64), mask=inside & (slot < nsample))
        lowest = tl.min(tl.where(inside, offs, 2147483647), axis=0)
        first = tl.where(found == 0, lowest, first)
    return found + count, first


@triton.jit
def _pad_ball(out, found, first, nsample, BLOCK_K: tl.constexpr):
    # The slots after the last point found repeat the first index found (0 for an empty ball).
    slots = tl.arange(0, BLOCK_K)
    pad = tl.zeros([BLOCK_K], tl.int64) + first.to(tl.int64)
    tl.store(out + slots, pad, mask=(slots >= found) & (slots < nsample))


@triton.jit
def _ball_query_kernel(
    planes_ptr, centres_ptr, out_ptr, out2_ptr, n, m, radius2, nsample, radius2_b, nsample_b,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TWO_RADII: tl.constexpr,
):  # fmt: skip
    # One program per centre: scan the cloud in index order, a block at a time, writing each point inside
    # the ball to its rank among those found so far, until nsample are found or the cloud ends; then pad.
    # With TWO_RADII, one scan serves a second ball (radius2_b, nsample_b) about the same centre.
    query = tl.program_id(0).to(tl.int64)
    cloud = query // m
    x_ptr = planes_ptr + cloud * 3 * n
    y_ptr = x_ptr + n
    z_ptr = y_ptr + n
    cx = tl.load(centres_ptr + query * 3)
    cy = tl.load(centres_ptr + query * 3 + 1)
    cz = tl.load(centres_ptr + query * 3 + 2)
    out = out_ptr + query * nsample
    out_b = out2_ptr + query * nsample_b
    lanes = tl.arange(0, BLOCK_N)
    found = tl.zeros([], tl.int32)
    first = tl.zeros([], tl.int32)
    found_b = tl.zeros([], tl.int32)
    first_b = tl.zeros([], tl.int32)
    if not TWO_RADII:
        found_b += nsample_b
    begin = tl.zeros([], tl.int32)
    while (begin < n) & ((found < nsample) | (found_b < nsample_b)):
        offs = begin + lanes
        valid = offs < n
        dx = tl.load(x_ptr + offs, mask=valid, other=0.0) - cx
        dy = tl.load(y_ptr + offs, mask=valid, other=0.0) - cy
        dz = tl.load(z_ptr + offs, mask=valid, other=0.0) - cz
        d = dx * dx + dy * dy + dz * dz
        if found < nsample:
            found, first = _take_inside(d, offs, valid, radius2, found, first, out, nsample)
        if TWO_RADII:  # noqa: SIM102 (a constexpr test first: Triton compiles the second ball out)
            if found_b < nsample_b:
                found_b, first_b = _take_inside(d, offs, valid, radius2_b, found_b, first_b, out_b, nsample_b)
        begin += BLOCK_N
    _pad_ball(out, found, first, nsample, BLOCK_K)
    if TWO_RADII:
        _pad_ball(out_b, found_b, first_b, nsample_b, BLOCK_K)


@triton.jit
def _three_nn_kernel(queries_ptr, planes_ptr, dist_ptr, idx_ptr, n, m, BLOCK_Q: tl.constexpr):
    # One program per block of BLOCK_Q unknown points of one cloud, one per lane. Each lane scans the known
    # points in index order and keeps the three nearest in sorted registers; a strict comparison keeps the
    # lower index among equal distances. Squared distances are summed x, y, z in order, unfused, as in the
    # torch path, so both find the same distances.
    cloud = tl.program_id(1).to(tl.int64)
    lanes = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    valid = lanes < n
    query = queries_ptr + (cloud * n + lanes) * 3
    qx = tl.load(query, mask=valid, other=0.0)
    qy = tl.load(query + 1, mask=valid, other=0.0)
    qz = tl.load(query + 2, mask=valid, other=0.0)
    x_ptr = planes_ptr + cloud * 3 * m
    y_ptr = x_ptr + m
    z_ptr = y_ptr + m
    d1 = tl.full([BLOCK_Q], float("inf"), tl.float32)
    d2 = tl.full([BLOCK_Q], float("inf"), tl.float32)
    d3 = tl.full([BLOCK_Q], float("inf"), tl.float32)
    i1 = tl.zeros([BLOCK_Q], tl.int32)
    i2 = tl.zeros([BLOCK_Q], tl.int32)
    i3 = tl.zeros([BLOCK_Q], tl.int32)
    for j in range(m):
        dx = qx - tl.load(x_ptr + j)
        dy = qy - tl.load(y_ptr + j)
        dz = qz - tl.load(z_ptr + j)
        d = dx * dx + dy * dy + dz * dz
        c1 = d < d1
        c2 = d < d2
        c3 = d < d3
        d3 = tl.where(c2, d2, tl.where(c3, d, d3))
        i3 = tl.where(c2, i2, tl.where(c3, j, i3))
        d2 = tl.where(c1, d1, tl.where(c2, d, d2))
        i2 = tl.where(c1, i1, tl.where(c2, j, i2))
        d1 = tl.where(c1, d, d1)
        i1 = tl.where(c1, j, i1)
    out = (cloud * n + lanes) * 3
    tl.store(dist_ptr + out, tl.sqrt_rn(d1), mask=valid)
    tl.store(dist_ptr + out + 1, tl.sqrt_rn(d2), mask=valid)
    tl.store(dist_ptr + out + 2, tl.sqrt_rn(d3), mask=valid)
    tl.store(idx_ptr + out, i1.to(tl.int64), mask=valid)
    tl.store(idx_ptr + out + 1, i2.to(tl.int64), mask=valid)
    tl.store(idx_ptr + out + 2, i3.to(tl.int64), mask=valid)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.three_nn for float32 contiguous CUDA unknown [B, n, 3] and known [B, m, 3], m >= 3."""
    batch, n, _ = unknown.shape
    dist = torch.empty(batch, n, 3, dtype=torch.float32, device=unknown.device)
    idx = torch.empty(batch, n, 3, dtype=torch.long, device=unknown.device)
    if batch * n == 0:
        return dist, idx
    grid = (triton.cdiv(n, THREE_NN_QUERIES), batch)
    _three_nn_kernel[grid](
        unknown, _planes(known), dist, idx, n, known.shape[1], BLOCK_Q=THREE_NN_QUERIES, num_warps=THREE_NN_WARPS,
        **NO_FUSION,
    )  # fmt: skip
    return dist, idx


def farthest_point_sample(xyz: torch.Tensor, npoint: int, start_index: int) -> torch.Tensor:
    """ops.farthest_point_sample for float32 contiguous CUDA xyz [B, N, 3] (arguments already checked)."""
    batch, n, _ = xyz.shape
    nearest = torch.full((batch, n), float("inf"), dtype=torch.float32, device=xyz.device)
    out = torch.empty(batch, npoint, dtype=torch.long, device=xyz.device)
    block = _block(n, FPS_MAX_BLOCK)
    _fps_kernel[(batch,)](
        _planes(xyz),
        nearest,
        out,
        n,
        npoint,
        start_index,
        BLOCK=block,
        num_warps=_fps_warps(block),
        **NO_FUSION,
    )
    return out


def ball_query_pair(xyz: torch.Tensor, centres: torch.Tensor, balls: list[tuple[float, int]]) -> list[torch.Tensor]:
    """ops.ball_query_scales for float32 contiguous CUDA tensors and one or two (float32 squared radius,
    nsample) balls about the same centres, in one scan."""
    batch, n, _ = xyz.shape
    m = centres.shape[1]
    outs = [torch.empty(batch, m, k, dtype=torch.long, device=xyz.device) for _, k in balls]
    if batch * m == 0:
        return outs
    (radius2, nsample), (radius2_b, nsample_b) = balls[0], balls[-1]
    widest = max(nsample, nsample_b)
    _ball_query_kernel[(batch * m,)](
        _planes(xyz), centres, outs[0], outs[-1], n, m, radius2, nsample, radius2_b, nsample_b,
        BLOCK_N=_block(n, BALL_QUERY_BLOCK), BLOCK_K=_block(widest, triton.next_power_of_2(widest)),
        TWO_RADII=len(balls) == 2, num_warps=BALL_QUERY_WARPS, **NO_FUSION,
    )  # fmt: skip
    return outs
