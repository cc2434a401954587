"""Point ops against brute-force numpy references (CPU), and Triton against torch on the GPU.

Tolerances: sampling and ball-query indices must be identical everywhere; three-NN interpolation
within 1e-5 of a float64 reference (CPU) and of the CPU result (GPU); a whole PointNet++ forward with
Triton ops within 1e-4 of the forced-torch forward on the same GPU (the indices are identical, so only
kernel scheduling differs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthcontrast.models import ops
from depthcontrast.models.pointnet2 import PointNet2SSG

INTERPOLATION_TOL = 1e-5
FORWARD_TOL = 1e-4

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_clouds(batch: int, n: int, seed: int, extent: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=generator) * extent


def grid_clouds(batch: int, n: int, seed: int) -> torch.Tensor:
    """Points on a 3x3x3 integer grid: many duplicates and exact distance ties."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (batch, n, 3), generator=generator).float()


def reference_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] float32 squared distances, rounded after each multiply and add."""
    dx, dy, dz = (a[:, None, axis] - b[None, :, axis] for axis in range(3))
    return dx * dx + dy * dy + dz * dz


def reference_fps(cloud: np.ndarray, npoint: int, start: int) -> list[int]:
    dists = reference_sq_dists(cloud, cloud)
    chosen = [start]
    while len(chosen) < npoint:
        nearest = dists[chosen].min(axis=0)
        chosen.append(int(np.argmax(nearest)))  # first maximum
    return chosen


def reference_ball_query(cloud: np.ndarray, centres: np.ndarray, radius: float, nsample: int) -> np.ndarray:
    radius2 = np.float32(radius * radius)
    out = np.zeros((len(centres), nsample), dtype=np.int64)
    for row, d2 in enumerate(reference_sq_dists(centres, cloud)):
        inside = [j for j in range(len(cloud)) if d2[j] < radius2][:nsample]
        if inside:
            out[row] = inside + [inside[0]] * (nsample - len(inside))
    return out


def reference_interpolate(unknown: np.ndarray, known: np.ndarray, feats: np.ndarray) -> np.ndarray:
    out = np.zeros((feats.shape[0], len(unknown)))
    for i, point in enumerate(unknown.astype(np.float64)):
        dist = np.sqrt(((known.astype(np.float64) - point) ** 2).sum(axis=1))
        nearest = np.argsort(dist, kind="stable")[:3]
        weights = 1.0 / (dist[nearest] + 1e-8)
        out[:, i] = feats[:, nearest] @ (weights / weights.sum())
    return out


@pytest.mark.parametrize("clouds", [random_clouds(2, 300, 0), grid_clouds(2, 200, 1)], ids=["random", "ties"])
@pytest.mark.parametrize("start", [0, 17])
def test_farthest_point_sample_matches_brute_force_including_ties(clouds: torch.Tensor, start: int) -> None:
    got = ops.farthest_point_sample(clouds, 40, start_index=start, backend="torch")
    assert got.dtype == torch.int64 and got.shape == (2, 40)
    for b in range(2):
        assert got[b].tolist() == reference_fps(clouds[b].numpy(), 40, start)


def test_farthest_point_sample_rejects_more_samples_than_points() -> None:
    with pytest.raises(ValueError, match="cannot sample 11 points from clouds of 10 points"):
        ops.farthest_point_sample(random_clouds(1, 10, 0), 11)


@pytest.mark.parametrize(("radius", "nsample"), [(0.3, 8), (0.6, 64), (0.05, 4)])
def test_ball_query_matches_brute_force(radius: float, nsample: int) -> None:
    clouds = random_clouds(2, 400, 3)
    centres = clouds[:, :25].contiguous()
    got = ops.ball_query(clouds, centres, radius, nsample, backend="torch")
    assert got.dtype == torch.int64 and got.shape == (2, 25, nsample)
    for b in range(2):
        expected = reference_ball_query(clouds[b].numpy(), centres[b].numpy(), radius, nsample)
        np.testing.assert_array_equal(got[b].numpy(), expected)


def test_ball_query_pads_with_first_index_and_empty_ball_with_zero() -> None:
    cloud = torch.tensor([[[5.0, 0, 0], [0.0, 0, 0], [9.0, 0, 0], [0.1, 0, 0]]])
    centres = torch.tensor([[[0.0, 0, 0], [50.0, 0, 0]]])
    got = ops.ball_query(cloud, centres, radius=0.5, nsample=4, backend="torch")
    assert got[0, 0].tolist() == [1, 3, 1, 1]
    assert got[0, 1].tolist() == [0, 0, 0, 0]


def test_ball_query_with_more_samples_than_points_pads() -> None:
    cloud = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]])
    got = ops.ball_query(cloud, cloud[:, :1], radius=0.15, nsample=5, backend="torch")
    assert got[0, 0].tolist() == [0, 1, 0, 0, 0]


def test_group_gathers_features_at_indices() -> None:
    features = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    idx = torch.tensor([[[4, 0]], [[1, 1]]])
    got = ops.group(features, idx)
    assert got.shape == (2, 3, 1, 2)
    assert got[0, :, 0].tolist() == [[4, 0], [9, 5], [14, 10]]
    assert got[1, :, 0].tolist() == [[16, 16], [21, 21], [26, 26]]


def test_three_nn_interpolate_matches_float64_reference() -> None:
    unknown, known = random_clouds(2, 60, 4), random_clouds(2, 20, 5)
    feats = torch.randn(2, 7, 20, generator=torch.Generator().manual_seed(6))
    got = ops.three_nn_interpolate(unknown, known, feats)
    assert got.shape == (2, 7, 60)
    for b in range(2):
        expected = reference_interpolate(unknown[b].numpy(), known[b].numpy(), feats[b].numpy())
        np.testing.assert_allclose(got[b].numpy(), expected, atol=INTERPOLATION_TOL, rtol=INTERPOLATION_TOL)


def test_interpolating_at_a_known_point_returns_its_features() -> None:
    known = random_clouds(1, 10, 7)
    feats = torch.randn(1, 4, 10, generator=torch.Generator().manual_seed(8))
    got = ops.three_nn_interpolate(known[:, 3:4], known, feats)
    torch.testing.assert_close(got[..., 0], feats[..., 3], atol=1e-6, rtol=1e-6)


def test_group_and_interpolate_pass_gradcheck() -> None:
    generator = torch.Generator().manual_seed(9)
    features = torch.randn(2, 3, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    idx = torch.randint(0, 6, (2, 4, 3), generator=generator)
    assert torch.autograd.gradcheck(lambda f: ops.group(f, idx), (features,))
    unknown, known = random_clouds(2, 5, 10).double(), random_clouds(2, 6, 11).double()
    assert torch.autograd.gradcheck(lambda f: ops.three_nn_interpolate(unknown, known, f), (features,))


def test_unknown_backend_is_rejected_and_triton_needs_cuda() -> None:
    cloud = random_clouds(1, 8, 0)
    with pytest.raises(ValueError, match="must be one of"):
        ops.farthest_point_sample(cloud, 2, backend="cuda")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        ops.farthest_point_sample(cloud, 2, backend="triton")


def test_environment_variable_forces_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ops.BACKEND_ENV, "torch")
    assert ops.resolve_backend(torch.zeros(1), "auto") == "torch"
    monkeypatch.setenv(ops.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        ops.resolve_backend(torch.zeros(1), "auto")


# ---------------------------------------------------------------- GPU: Triton against torch


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    ("batch", "n", "npoint", "start"),
    [(4, 20_000, 2048, 0), (3, 3001, 1024, 123), (2, 512, 256, 5), (2, 37, 37, 0)],
)
def test_triton_sampling_equals_torch_on_gpu_and_cpu(batch: int, n: int, npoint: int, start: int) -> None:
    clouds = random_clouds(batch, n, n, extent=6.0)
    cuda = clouds.cuda()
    triton_idx = ops.farthest_point_sample(cuda, npoint, start, backend="triton")
    torch_idx = ops.farthest_point_sample(cuda, npoint, start, backend="torch")
    assert torch.equal(triton_idx, torch_idx)
    assert torch.equal(triton_idx.cpu(), ops.farthest_point_sample(clouds, npoint, start, backend="torch"))


@pytest.mark.gpu
@gpu
def test_triton_sampling_equals_torch_with_ties() -> None:
    clouds = grid_clouds(3, 5000, 12).cuda()
    assert torch.equal(
        ops.farthest_point_sample(clouds, 300, backend="triton"),
        ops.farthest_point_sample(clouds, 300, backend="torch"),
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    ("n", "m", "radius", "nsample"), [(20_000, 2048, 0.2, 64), (2048, 1024, 0.4, 32), (777, 100, 1.2, 16)]
)
def test_triton_ball_query_equals_torch(n: int, m: int, radius: float, nsample: int) -> None:
    clouds = random_clouds(2, n, n + 1, extent=3.0).cuda()
    centres = torch.cat([clouds[:, : m - 1], torch.full((2, 1, 3), 100.0, device="cuda")], dim=1)
    got = ops.ball_query(clouds, centres, radius, nsample, backend="triton")
    assert torch.equal(got, ops.ball_query(clouds, centres, radius, nsample, backend="torch"))
    assert got[:, -1].eq(0).all()  # the far centre's ball is empty


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("n", "m"), [(16_384, 4096), (20_000, 2048), (777, 100), (50, 3)])
def test_triton_three_nn_equals_torch(n: int, m: int) -> None:
    unknown, known = random_clouds(2, n, 17).cuda(), random_clouds(2, m, 18).cuda()
    dist, idx = ops.three_nn(unknown, known, backend="triton")
    want_dist, want_idx = ops.three_nn(unknown, known, backend="torch")
    assert torch.equal(dist, want_dist)
    assert torch.equal(idx, want_idx)  # random clouds: no ties


@pytest.mark.gpu
@gpu
def test_triton_three_nn_with_ties_keeps_the_distances_and_the_interpolation() -> None:
    unknown, known = grid_clouds(2, 3000, 19).cuda(), grid_clouds(2, 400, 20).cuda()
    dist, idx = ops.three_nn(unknown, known, backend="triton")
    want_dist, _ = ops.three_nn(unknown, known, backend="torch")
    assert torch.equal(dist, want_dist)
    assert torch.equal(ops.squared_distances(known, unknown).gather(2, idx).sqrt(), dist)  # the indices' own
    assert bool((idx[..., :-1] < idx[..., 1:])[dist[..., :-1] == dist[..., 1:]].all())  # ties: lower index first


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    ("n", "radii", "nsamples"),
    [(16_384, [0.1, 0.5], [16, 32]), (4096, [1.0, 0.5], [32, 16]), (2048, [0.2, 0.4, 0.8], [16, 32, 64])],
)
def test_triton_ball_query_scales_equal_one_query_each(n: int, radii: list[float], nsamples: list[int]) -> None:
    """Multi-scale grouping scans the cloud once per pair of balls; each ball equals its own query."""
    clouds = random_clouds(2, n, 21, extent=6.0).cuda()
    centres = torch.cat([clouds[:, :255], torch.full((2, 1, 3), 100.0, device="cuda")], dim=1)
    got = ops.ball_query_scales(clouds, centres, radii, nsamples, backend="triton")
    assert len(got) == len(radii)
    for idx, radius, nsample in zip(got, radii, nsamples, strict=True):
        assert torch.equal(idx, ops.ball_query(clouds, centres, radius, nsample, backend="torch"))


@pytest.mark.gpu
@gpu
def test_interpolation_on_gpu_matches_cpu() -> None:
    unknown, known = random_clouds(2, 1024, 13), random_clouds(2, 512, 14)
    feats = torch.randn(2, 64, 512, generator=torch.Generator().manual_seed(15))
    got = ops.three_nn_interpolate(unknown.cuda(), known.cuda(), feats.cuda()).cpu()
    torch.testing.assert_close(
        got, ops.three_nn_interpolate(unknown, known, feats), atol=INTERPOLATION_TOL, rtol=INTERPOLATION_TOL
    )


@pytest.mark.gpu
@gpu
def test_pointnet2_forward_with_triton_ops_matches_forced_torch_ops() -> None:
    torch.manual_seed(16)
    fast = PointNet2SSG(scale=1, backend="triton").cuda().eval()
    slow = PointNet2SSG(scale=1, backend="torch").cuda().eval()
    slow.load_state_dict(fast.state_dict())
    clouds = random_clouds(2, 20_000, 17, extent=4.0).cuda()
    with torch.no_grad():
        got, expected = fast(clouds), slow(clouds)
    for key in ("sa1_inds", "sa2_inds", "sa3_inds", "sa4_inds", "fp2_inds"):
        assert torch.equal(got[key], expected[key]), key
    assert got["fp2_features"].shape == (2, 512, 1024)
    torch.testing.assert_close(got["fp2_features"], expected["fp2_features"], atol=FORWARD_TOL, rtol=FORWARD_TOL)


def test_group_float32_gathers_the_same_values_and_sums_bf16_gradients_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 50, generator=generator).to(torch.bfloat16).requires_grad_()
    idx = torch.randint(0, 50, (2, 10, 16), generator=generator)
    out = ops.group_float32(feats, idx)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ops.group(feats, idx))
    grad = torch.randn(out.shape, generator=generator).to(torch.bfloat16)
    out.backward(grad)
    flat = idx.reshape(2, 1, -1).expand(2, 8, -1)
    want = torch.zeros(2, 8, 50).scatter_add_(2, flat, grad.float().reshape(2, 8, -1)).to(torch.bfloat16)
    assert torch.equal(feats.grad, want)
    fp64 = torch.randn(2, 8, 50, dtype=torch.float64)
    assert ops.group_float32(fp64, idx).dtype == torch.float64  # wider features are gathered as they are
