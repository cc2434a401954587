"""PointNet++ SSG backbone and encoder: the original's layer table, keys, shapes, behaviour."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import nn

from depthcontrast.errors import ConfigError
from depthcontrast.models.heads import MLPHead, PointNetEncoder
from depthcontrast.models.pointnet2 import PointNet2SSG

SMALL_NPOINTS = (256, 128, 64, 32)
FP2_WIDTH = {1: 512, 2: 512, 3: 768, 4: 1024}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def seed_widths(s: int) -> dict[str, list[int]]:
    """Channel widths per shared MLP, input first, written out from the original's table."""
    widths = {
        "sa1": [3, 64 * s, 64 * s, 128 * s],
        "sa2": [128 * s + 3, 128 * s, 128 * s, 256 * s],
        "sa3": [256 * s + 3, 128 * s, 128 * s, 256 * s],
        "sa4": [256 * s + 3, 128 * s, 128 * s, 256 * s],
    }
    if s == 1:
        widths |= {"fp1": [256 + 256, 512, 512], "fp2": [512 + 256, 512, 512]}
    else:
        widths |= {"fp1": [512 * s, 256 * s, 256 * s], "fp2": [512 * s, 256 * s, 256 * s]}
    return widths


def expected_state_shapes(s: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, widths in seed_widths(s).items():
        mlp = "mlp_module" if name.startswith("sa") else "mlp"
        for i, (cin, cout) in enumerate(pairwise(widths)):
            prefix = f"{name}.{mlp}.layer{i}"
            shapes[f"{prefix}.conv.weight"] = (cout, cin, 1, 1)
            for key in BN_KEYS:
                shapes[f"{prefix}.bn.bn.{key}"] = () if key == "num_batches_tracked" else (cout,)
    head = FP2_WIDTH[s]
    shapes |= {"head.clf.0.weight": (512, head), "head.clf.0.bias": (512,)}
    shapes |= {"head.clf.2.weight": (128, 512), "head.clf.2.bias": (128,)}
    return shapes


def grid_cloud(batch: int, n: int, seed: int) -> torch.Tensor:
    """Coordinates on a 1/64 m grid in [0, 2) m: sums and differences are exact in float32."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (batch, n, 3), generator=generator).float() / 64


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_encoder_state_dict_has_exactly_the_seed_keys_and_shapes(scale: int) -> None:
    model = PointNetEncoder(scale=scale, mlp_dims=(FP2_WIDTH[scale], 512, 128))
    got = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert got == expected_state_shapes(scale)


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_fp2_width_is_512_512_768_1024(scale: int) -> None:
    assert PointNet2SSG(scale=scale).out_channels == FP2_WIDTH[scale]


def test_seed_1x_reference_shapes() -> None:
    state = PointNetEncoder(scale=1).state_dict()
    assert state["sa1.mlp_module.layer0.conv.weight"].shape == (64, 3, 1, 1)
    assert state["head.clf.0.weight"].shape == (512, 512)
    assert state["head.clf.2.weight"].shape == (128, 512)
    assert state["fp2.mlp.layer1.bn.bn.weight"].shape == (512,)


def test_convolutions_have_no_bias_and_head_is_linear_relu_linear() -> None:
    model = PointNetEncoder(scale=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 * 3 + 2 * 2 and all(conv.bias is None for conv in convs)
    assert [type(layer) for layer in model.head.clf] == [nn.Linear, nn.ReLU, nn.Linear]


def test_forward_returns_seed_end_points_with_configured_npoints() -> None:
    model = PointNet2SSG(scale=1, npoints=SMALL_NPOINTS).eval()
    cloud = grid_cloud(2, 1024, 0)
    with torch.no_grad():
        out = model(cloud)
    for level, (npoint, width) in enumerate(zip(SMALL_NPOINTS, (128, 256, 256, 256), strict=True), start=1):
        assert out[f"sa{level}_xyz"].shape == (2, npoint, 3)
        assert out[f"sa{level}_features"].shape == (2, width, npoint)
        assert out[f"sa{level}_inds"].shape == (2, npoint)
    assert out["fp1_features"].shape == (2, 512, SMALL_NPOINTS[2])
    assert out["fp2_features"].shape == (2, 512, SMALL_NPOINTS[1])
    assert torch.equal(out["fp2_xyz"], out["sa2_xyz"])
    picked = torch.gather(cloud, 1, out["fp2_inds"][..., None].expand(-1, -1, 3))
    assert torch.equal(picked, out["fp2_xyz"])


def test_backbone_features_do_not_change_when_the_cloud_is_translated() -> None:
    model = PointNet2SSG(scale=1, npoints=SMALL_NPOINTS).eval()
    cloud = grid_cloud(1, 600, 1)
    with torch.no_grad():
        here = model(cloud)["fp2_features"]
        moved = model(cloud + torch.tensor([8.0, -4.0, 2.0]))["fp2_features"]
    torch.testing.assert_close(here, moved, atol=1e-5, rtol=1e-5)


def test_encoder_embeds_each_cloud_and_trains_end_to_end() -> None:
    model = PointNetEncoder(scale=1, npoints=SMALL_NPOINTS).train()
    embedding = model(grid_cloud(2, 800, 2))
    assert embedding.shape == (2, 128)
    embedding.pow(2).sum().backward()
    first = model.sa1.mlp_module.layer0.conv.weight.grad
    assert first is not None and first.abs().sum() > 0
    assert int(model.sa1.mlp_module.layer0.bn.bn.num_batches_tracked) == 1


def test_encoder_keeps_the_batch_dimension_for_one_cloud() -> None:
    model = PointNetEncoder(scale=1, npoints=SMALL_NPOINTS).eval()
    with torch.no_grad():
        assert model(grid_cloud(1, 400, 3)).shape == (1, 128)


@pytest.mark.parametrize(("scale", "first"), [(1, 768), (3, 512), (4, 768)])
def test_head_width_must_match_fp2_width(scale: int, first: int) -> None:
    with pytest.raises(ConfigError, match=f"fp2 width of a {scale}x PointNet"):
        PointNetEncoder(scale=scale, mlp_dims=(first, 512, 128))


@pytest.mark.parametrize(
    ("npoints", "problem"),
    [
        ((256, 128, 64), "4 positive integers"),
        ((128, 256, 64, 32), "must not increase"),
        ((8, 4, 2, 2), "at least 3"),
    ],
)
def test_bad_npoints_are_config_errors(npoints: tuple[int, ...], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        PointNet2SSG(npoints=npoints)


def test_bad_scale_and_head_dims_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="scale must be a positive integer"):
        PointNet2SSG(scale=0)
    with pytest.raises(ConfigError, match="at least two"):
        MLPHead([128])


def test_cloud_smaller_than_first_level_is_reported() -> None:
    with pytest.raises(ValueError, match="cannot sample 256 points from clouds of 100 points"):
        PointNet2SSG(npoints=SMALL_NPOINTS)(grid_cloud(1, 100, 4))
