"""The GPU fast path (`compile: true`): each point block's dense part through torch.compile against eager.

The CPU twin runs here (Inductor's C++ backend): SSG and MSG set abstraction and feature propagation, compiled
against a copy run eagerly from the same weights and inputs. Eval-mode outputs agree to float rounding; in train
mode BatchNorm's batch statistics are summed in another order, so outputs and gradients agree to 1e-4 of their
scale, and the running statistics are updated alike. Clouds are dense at the scale of the radii (most balls
hold more points than nsample): on sparse clouds most neighbours are padding copies of one point, and near-constant
channels amplify rounding differences without bound. The GPU tests repeat this at the pretraining sizes (1x,
20,000 points, bf16 and fp32).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from depthcontrast.models.heads import PointNetEncoder, PointNetMSGEncoder
from depthcontrast.models.pointnet2 import FeaturePropagation, SetAbstraction, SharedMLP, fuse_point_blocks
from depthcontrast.models.pointnet2_msg import MultiScaleSetAbstraction

EVAL_TOL = 1e-5  # relative to the output's scale
TRAIN_TOL = 1e-4  # outputs and gradients, relative to their scale
GPU_FP32_TOL = 2e-3  # GPU reductions (BatchNorm statistics, weight gradients) summed in another order
GPU_BF16_TOL = 3e-2  # bf16 rounds to 8 bits: compiled and eager round different intermediates (eval-mode outputs)
GAP_RATIO = 1.5  # train mode on the GPU: the fused block may be at most this much farther from float64 than eager
GAP_FLOOR = 1e-4

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def dense_cloud(batch: int, points: int, extent_m: float, seed: int, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, points, 3, generator=generator) * extent_m).to(device)


def relative_gap(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


def run_block(module: nn.Module, inputs: tuple, train: bool, autocast: bool, weights_seed: int = 1) -> tuple:
    """`module`'s output and parameter gradients (of a fixed random projection of the output) on `inputs`."""
    module.train(train)
    module.zero_grad(set_to_none=True)
    device = next(module.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        out = module(*inputs)
    out = out[1] if isinstance(out, tuple) else out
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(weights_seed)).to(out.device)
    (out.double() * weights.double()).sum().backward()
    return out.detach(), {name: p.grad for name, p in module.named_parameters()}


def worst_gap(got: tuple, want: tuple) -> tuple[float, str]:
    """The largest relative gap over the output and every parameter gradient, and where it is."""
    gaps = {"output": relative_gap(got[0], want[0])}
    gaps |= {name: relative_gap(got[1][name], grad) for name, grad in want[1].items()}
    worst = max(gaps, key=gaps.get)
    return gaps[worst], worst


def compare(
    eager: nn.Module, inputs: tuple, tol: float, train: bool, weights_seed: int = 1, autocast: bool = False
) -> None:
    """Run `eager` and a fused copy on the same inputs; outputs, parameter gradients and BN buffers agree."""
    fused = copy.deepcopy(eager)
    assert fuse_point_blocks(fused) >= 1
    want = run_block(eager, inputs, train, autocast, weights_seed)
    got = run_block(fused, inputs, train, autocast, weights_seed)
    gap, where = worst_gap(got, want)
    assert gap < tol, f"gap {gap:.2e} at {where}"
    for (name, want_buffer), (_, got_buffer) in zip(eager.named_buffers(), fused.named_buffers(), strict=True):
        assert torch.allclose(got_buffer.float(), want_buffer.float(), rtol=tol, atol=tol), name


@pytest.mark.parametrize("train", [False, True])
def test_set_abstraction_fused_matches_eager(train: bool) -> None:
    torch.manual_seed(0)
    sa = SetAbstraction(npoint=64, radius=0.2, nsample=32, widths=[3 + 4, 16, 32], backend="torch")
    xyz = dense_cloud(2, 1024, 0.6, seed=0)
    features = torch.randn(2, 4, 1024, generator=torch.Generator().manual_seed(1))
    compare(sa, (xyz, features), TRAIN_TOL if train else EVAL_TOL, train)


def test_multi_scale_set_abstraction_fused_matches_eager() -> None:
    torch.manual_seed(0)
    sa = MultiScaleSetAbstraction(64, [0.1, 0.2], [16, 32], [[16, 32], [16, 16]], in_channels=1, backend="torch")
    xyz = dense_cloud(2, 1024, 0.6, seed=2)
    features = torch.randn(2, 1, 1024, generator=torch.Generator().manual_seed(3))
    compare(sa, (xyz, features), TRAIN_TOL, train=True)


def test_feature_propagation_fused_matches_eager() -> None:
    torch.manual_seed(0)
    fp = FeaturePropagation(SharedMLP([24 + 8, 32, 32]))
    unknown, known = dense_cloud(2, 256, 1.0, seed=4), dense_cloud(2, 64, 1.0, seed=5)
    generator = torch.Generator().manual_seed(6)
    skip, known_features = torch.randn(2, 8, 256, generator=generator), torch.randn(2, 24, 64, generator=generator)
    compare(fp, (unknown, known, skip, known_features), TRAIN_TOL, train=True)


@pytest.mark.parametrize("encoder_class", [PointNetEncoder, PointNetMSGEncoder])
def test_both_views_sampled_in_one_launch_equal_one_call_each(encoder_class: type) -> None:
    """prepare_views' first-level centres are those each view's forward samples itself; so are the embeddings."""
    torch.manual_seed(0)
    if encoder_class is PointNetEncoder:
        encoder = PointNetEncoder(scale=1, mlp_dims=[512, 64, 32], npoints=[64, 32, 16, 8], backend="torch")
        views = dense_cloud(2, 512, 1.0, seed=8), dense_cloud(2, 512, 1.0, seed=9)
        first = encoder.sa1
    else:
        encoder = PointNetMSGEncoder(mlp_dims=[128, 32], npoints=[64, 32, 16, 8], backend="torch")
        views = tuple(torch.cat([dense_cloud(2, 512, 4.0, seed=s), torch.rand(2, 512, 1)], dim=2) for s in (8, 9))
        first = encoder.SA_modules[0]
    encoder.eval()
    prepared = encoder.prepare_views(*views)
    for view, (same_view, inds) in zip(views, prepared, strict=True):
        assert same_view is view
        assert torch.equal(inds, first.sample(view[..., :3].contiguous()))
        assert torch.equal(encoder(*(view, inds)), encoder(view))


def test_fuse_point_blocks_leaves_the_state_dict_alone() -> None:
    encoder = PointNetEncoder(scale=1, mlp_dims=[512, 64, 32], npoints=[64, 32, 16, 8])
    keys = list(encoder.state_dict())
    assert fuse_point_blocks(encoder) == 6  # sa1..sa4, fp1, fp2
    assert list(encoder.state_dict()) == keys


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Full fp32 convolutions and matmuls for the duration (cuDNN's default is TF32, Inductor's GEMMs are not)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pretraining_sa1() -> tuple[nn.Module, torch.Tensor]:
    """The 1x sa1 block at pretraining size (batch 4 x 20,000 points, dense at its 0.2 m radius) on the GPU."""
    torch.manual_seed(0)
    sa = SetAbstraction(npoint=2048, radius=0.2, nsample=64, widths=[3, 64, 64, 128]).cuda()
    return sa, dense_cloud(4, 20_000, 2.0, seed=7, device="cuda")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_first_level_is_as_close_to_float64_as_eager_on_gpu(precision: str, no_tf32: None) -> None:
    """In train mode at this size, BatchNorm's backward cancels large sums, so rounding in another order moves
    some weight gradients by ~1e-3 of their scale in fp32 (~1e-1 in bf16) whichever path runs. The fused block
    must be no farther from a float64 run of the same block than eager is, in either precision."""
    sa, xyz = pretraining_sa1()
    fused = copy.deepcopy(sa)
    fuse_point_blocks(fused)
    reference = run_block(copy.deepcopy(sa).double(), (xyz.double(), None), train=True, autocast=False)
    bf16 = precision == "bf16"
    eager_gap, _ = worst_gap(run_block(sa, (xyz, None), train=True, autocast=bf16), reference)
    fused_gap, where = worst_gap(run_block(fused, (xyz, None), train=True, autocast=bf16), reference)
    assert fused_gap <= GAP_RATIO * eager_gap + GAP_FLOOR, f"{fused_gap:.2e} at {where}, eager {eager_gap:.2e}"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_encoder_output_matches_eager_on_gpu(precision: str) -> None:
    """The whole 1x encoder at pretraining size, eval mode: the embeddings agree.

    (Gradients of a whole randomly initialised encoder are not compared: through 16 BatchNorm layers and the
    max-pools, rounding differences are amplified without bound; each block's are compared above.)
    """
    torch.manual_seed(0)
    encoder = PointNetEncoder(scale=1).cuda().eval()
    fused = copy.deepcopy(encoder)
    fuse_point_blocks(fused)
    xyz = dense_cloud(4, 20_000, 2.0, seed=7, device="cuda")
    bf16 = precision == "bf16"
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        want, got = encoder(xyz), fused(xyz)
    assert relative_gap(got, want) < (GPU_BF16_TOL if bf16 else GPU_FP32_TOL)
