"""PointNet-MSG backbone (OpenPCDet's PointNet2MSG as PointRCNN configures it): keys and shapes against
OpenPCDet's layout, grouping semantics, forward shapes, intensity views, and a tiny run trained, exported
to OpenPCDet and evaluated on the built-in LiDAR shards."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.config import validate_config
from depthcontrast.data.augment import TransformSpec, build_transforms
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.data.views import PointViews, TwoViewDataset, build_view_dataset
from depthcontrast.errors import ConfigError
from depthcontrast.evaluate import run_evaluation
from depthcontrast.export import export_checkpoint
from depthcontrast.export.openpcdet_reference import OpenPCDetPointNet2MSG
from depthcontrast.models import ops
from depthcontrast.models.encoders import build_backbone, build_point_encoder
from depthcontrast.models.heads import PointNetMSGEncoder
from depthcontrast.models.pointnet2_msg import MultiScaleSetAbstraction, PointNet2MSG
from depthcontrast.specs import MSGBackbone, parse_run, point_backbone
from tests.conftest import run_cli

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SMALL_NPOINTS = [128, 64, 32, 16]


def pointrcnn_mlp_widths(input_channels: int = 4) -> dict[str, list[int]]:
    """Every shared MLP of OpenPCDet's PointNet2MSG for tools/cfgs/kitti_models/pointrcnn.yaml, input width
    first, worked out by hand from its SA_CONFIG.MLPS and FP_MLPS (each SA scale's input: the previous
    level's channels + 3 for xyz; FP k's input: the width coming up from below + level k's own channels)."""
    c = input_channels - 3  # 1 = intensity at KITTI's input_channels 4
    return {
        "SA_modules.0.mlps.0": [c + 3, 16, 16, 32],
        "SA_modules.0.mlps.1": [c + 3, 32, 32, 64],  # level 1 out: 32 + 64 = 96
        "SA_modules.1.mlps.0": [96 + 3, 64, 64, 128],
        "SA_modules.1.mlps.1": [96 + 3, 64, 96, 128],  # 256
        "SA_modules.2.mlps.0": [256 + 3, 128, 196, 256],
        "SA_modules.2.mlps.1": [256 + 3, 128, 196, 256],  # 512
        "SA_modules.3.mlps.0": [512 + 3, 256, 256, 512],
        "SA_modules.3.mlps.1": [512 + 3, 256, 384, 512],  # 1024
        "FP_modules.0.mlp": [256 + c, 128, 128],
        "FP_modules.1.mlp": [512 + 96, 256, 256],
        "FP_modules.2.mlp": [512 + 256, 512, 512],
        "FP_modules.3.mlp": [1024 + 512, 512, 512],
    }


def pointrcnn_backbone_shapes(input_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """OpenPCDet PointNet2MSG state_dict shapes: Conv2d(bias=False) at 3i, BatchNorm2d at 3i + 1, ReLU at 3i + 2."""
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, widths in pointrcnn_mlp_widths(input_channels).items():
        for i in range(len(widths) - 1):
            cin, cout = widths[i], widths[i + 1]
            shapes[f"{prefix}.{3 * i}.weight"] = (cout, cin, 1, 1)
            for key in BN_KEYS:
                shapes[f"{prefix}.{3 * i + 1}.{key}"] = () if key == "num_batches_tracked" else (cout,)
    return shapes


def shapes_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def msg_backbone_config(**overrides) -> dict:
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}}}
    config["pretrain"] = {"r": {"datasets": ["d"], "backbone": {"name": "pointnet2_msg", **overrides}}}
    return validate_config(config)["pretrain"]["r"]["backbone"]


def msg_backbone(**overrides) -> MSGBackbone:
    """The spec of a validated PointNet-MSG block with `overrides`."""
    return point_backbone(msg_backbone_config(**overrides))


def lidar_cloud(batch: int, n: int, seed: int, features: int = 1) -> torch.Tensor:
    """xyz on a 1/8 m grid in a 32 m square (sums and differences exact in float32), intensity in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, 256, (batch, n, 3), generator=generator).float() / 8
    xyz[..., 2] /= 8
    return torch.cat([xyz, torch.rand(batch, n, features, generator=generator)], dim=-1)


# ------------------------------------------------------------------------------------- layout
def test_backbone_state_dict_is_openpcdets_pointrcnn_layout_key_for_key():
    assert shapes_of(PointNet2MSG()) == pointrcnn_backbone_shapes(4)


def test_the_export_check_module_written_from_openpcdets_rules_has_the_same_layout():
    mlps = [[[16, 16, 32], [32, 32, 64]], [[64, 64, 128], [64, 96, 128]], [[128, 196, 256]] * 2,
            [[256, 256, 512], [256, 384, 512]]]  # fmt: skip
    fp_mlps = [[128, 128], [256, 256], [512, 512], [512, 512]]
    assert shapes_of(OpenPCDetPointNet2MSG(mlps, fp_mlps, input_channels=4)) == pointrcnn_backbone_shapes(4)
    assert shapes_of(OpenPCDetPointNet2MSG(mlps, fp_mlps, input_channels=3)) == pointrcnn_backbone_shapes(3)


def test_config_defaults_are_pointrcnns_and_xyz_only_drops_the_intensity_channel():
    backbone = msg_backbone_config()
    assert backbone["npoints"] == [4096, 1024, 256, 64]
    assert backbone["radius"] == [[0.1, 0.5], [0.5, 1.0], [1.0, 2.0], [2.0, 4.0]]
    assert backbone["nsample"] == [[16, 32]] * 4 and backbone["features"] == ["intensity"]
    assert shapes_of(build_backbone(point_backbone(backbone))) == pointrcnn_backbone_shapes(4)
    assert shapes_of(build_backbone(msg_backbone(features=[]))) == pointrcnn_backbone_shapes(3)


def test_encoder_is_the_backbone_keys_plus_the_originals_128_128_128_head():
    encoder = build_point_encoder(msg_backbone(), embedding_dim=128)
    assert isinstance(encoder, PointNetMSGEncoder)
    head = {"head.clf.0.weight": (128, 128), "head.clf.0.bias": (128,)}
    head |= {"head.clf.2.weight": (128, 128), "head.clf.2.bias": (128,)}
    assert shapes_of(encoder) == pointrcnn_backbone_shapes(4) | head
    assert [type(layer) for layer in encoder.head.clf] == [nn.Linear, nn.ReLU, nn.Linear]
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 * 3 + 4 * 2 and all(conv.bias is None for conv in convs)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"npoints": [64, 128, 32, 16]}, "must not increase"),
        ({"npoints": [64, 32, 16]}, "3 levels but radius 4, nsample 4, mlps 4, fp_mlps 4"),
        ({"nsample": [[16], [16, 32], [16, 32], [16, 32]]}, "level 0: radius, nsample and mlps need one entry"),
        ({"npoints": [64, 32, 16, 2]}, "at least 3 points"),
    ],
)
def test_inconsistent_settings_are_config_errors(overrides: dict, problem: str):
    with pytest.raises(ConfigError, match=problem):
        build_backbone(msg_backbone(**overrides))


def test_head_must_start_at_the_output_width_and_end_at_the_embedding():
    with pytest.raises(ConfigError, match=r"PointNet-MSG output width \(128\)"):
        build_point_encoder(msg_backbone(head_dims=[256, 128, 128]), embedding_dim=128)
    with pytest.raises(ConfigError, match=r"ends with 64, but loss\.embedding_dim is 128"):
        build_point_encoder(msg_backbone(head_dims=[128, 64]), embedding_dim=128)


def test_schema_keeps_msg_and_ssg_keys_apart():
    with pytest.raises(ConfigError, match="unknown key 'scale'"):
        msg_backbone_config(scale=2)
    with pytest.raises(ConfigError, match=r"'rgb' is not allowed \(allowed: 'intensity'\)"):
        msg_backbone_config(features=["rgb"])


# ------------------------------------------------------------------------------------ behaviour
def brute_force_sa(sa: MultiScaleSetAbstraction, xyz: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """OpenPCDet's PointnetSAModuleMSG, one centre at a time: FPS centres, per scale the first nsample
    points (index order) closer than the radius, padded with the first; offsets in metres, then features."""
    inds = ops.farthest_point_sample(xyz, sa.npoint, backend="torch")
    batch_out = []
    for b in range(xyz.shape[0]):
        centres = xyz[b, inds[b]]
        scales = []
        for radius, nsample, mlp in zip(sa.radii, sa.nsamples, sa.mlps, strict=True):
            groups = []
            for centre in centres:
                d2 = ((xyz[b] - centre) ** 2).sum(dim=1)
                inside = [i for i in range(xyz.shape[1]) if d2[i] < radius * radius][:nsample]
                inside += [inside[0]] * (nsample - len(inside))
                offsets = (xyz[b, inside] - centre).T  # [3, nsample]
                groups.append(torch.cat([offsets, features[b][:, inside]], dim=0))
            grouped = torch.stack(groups, dim=1)[None]  # [1, 3 + C, M, nsample]
            scales.append(mlp(grouped).max(dim=-1).values[0])
        batch_out.append(torch.cat(scales, dim=0))
    return torch.stack(batch_out)


def test_set_abstraction_groups_metre_offsets_then_features_like_openpcdet():
    torch.manual_seed(0)
    sa = MultiScaleSetAbstraction(16, [1.0, 3.0], [4, 8], [[8, 16], [8, 8]], in_channels=1, backend="torch").eval()
    cloud = lidar_cloud(2, 200, 0)
    xyz, features = cloud[..., :3].contiguous(), cloud[..., 3:].transpose(1, 2).contiguous()
    with torch.no_grad():
        _, fast, _ = sa(xyz, features)
        slow = brute_force_sa(sa, xyz, features)
    assert fast.shape == (2, 16 + 8, 16)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_forward_gives_per_point_features_for_every_input_point():
    model = PointNet2MSG(npoints=SMALL_NPOINTS).eval()
    cloud = lidar_cloud(2, 512, 1)
    with torch.no_grad():
        out = model(cloud)
    for level, (npoint, width) in enumerate(zip(SMALL_NPOINTS, (96, 256, 512, 1024), strict=True), start=1):
        assert out[f"sa{level}_xyz"].shape == (2, npoint, 3)
        assert out[f"sa{level}_features"].shape == (2, width, npoint)
    assert out["fp2_features"].shape == (2, 128, 512) and model.out_channels == 128
    assert torch.equal(out["fp2_xyz"], cloud[..., :3])
    assert torch.equal(out["fp2_inds"], torch.arange(512).expand(2, 512))


def test_features_are_translation_invariant_and_read_the_intensity():
    model = PointNet2MSG(npoints=SMALL_NPOINTS).eval()
    cloud = lidar_cloud(1, 400, 2)
    moved = cloud + torch.tensor([40.0, -24.0, 8.0, 0.0])
    brighter = cloud * torch.tensor([1.0, 1.0, 1.0, 0.5])
    with torch.no_grad():
        here, there, dimmer = (model(c)["fp2_features"] for c in (cloud, moved, brighter))
    torch.testing.assert_close(here, there, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(here, dimmer, atol=1e-3)


def test_encoder_trains_end_to_end_and_checks_its_input_width():
    encoder = PointNetMSGEncoder(npoints=SMALL_NPOINTS).train()
    embedding = encoder(lidar_cloud(2, 300, 3))
    assert embedding.shape == (2, 128)
    embedding.pow(2).sum().backward()
    assert encoder.SA_modules[0].mlps[0][0].weight.grad.abs().sum() > 0
    assert encoder.FP_modules[0].mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expects points \[B, N, 4\], got \[1, 300, 3\]"):
        encoder(lidar_cloud(1, 300, 3)[..., :3])


# ------------------------------------------------------------------------ data, training, export
MSG_RUN = {
    "datasets": ["demo_lidar"],
    "backbone": {
        "name": "pointnet2_msg",
        "npoints": [128, 64, 32, 16],
        "radius": [[1.5, 3.0], [3.0, 6.0], [6.0, 12.0], [12.0, 24.0]],
        "nsample": [[8, 16]] * 4,
    },
    "augmentations": "lidar",
    "augmentation_overrides": {"random_cuboid_lidar": {"npoints": 500}, "resample_lidar": {"far_range": 1000000}},
    "points_per_view": 512,
    "batch_size": 4,
    "epochs": 2,
    "optimizer": {"lr": 0.03},
    "loss": {"num_negatives": 16},
    "num_workers": 0,
    "checkpoint_every_epochs": 1,
    "log_every_steps": 1,
    "export_targets": ["openpcdet", "plain"],
}


@pytest.fixture(scope="module")
def lidar_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/ with both built-in datasets preprocessed, and a config with the tiny MSG run."""
    results = tmp_path_factory.mktemp("msg") / "results"
    config = results.parent / "config.yaml"
    datasets = {
        name: {"source": {"kind": "builtin", "subset": subset}, "preprocess": {"max_points": 4000, "min_points": 500}}
        for name, subset in (("demo_lidar", "lidar"), ("demo_indoor", "indoor"))
    }
    config.write_text(yaml.safe_dump({"datasets": datasets, "pretrain": {"msg": MSG_RUN}}))
    for dataset in datasets:
        for stage in ("download", "preprocess"):
            done = run_cli(stage, "--config", str(config), "--dataset", dataset, "--results", str(results))
            assert done.returncode == 0, done.stderr
    return results


def validated_run(lidar_results: Path) -> dict:
    return validate_config(yaml.safe_load((lidar_results.parent / "config.yaml").read_text()))["pretrain"]["msg"]


def test_views_carry_each_points_scaled_intensity_after_xyz(lidar_results: Path):
    dataset = build_view_dataset([lidar_results / "shards/demo_lidar"], parse_run(validated_run(lidar_results)))
    shards = ShardDataset(lidar_results / "shards/demo_lidar")
    for index in range(0, len(dataset), 7):
        item = dataset[index]
        intensity = shards[index]["features"][:, 0].astype(np.float32)
        scaled = intensity / intensity.max() if intensity.max() > 0 else intensity
        for view in (item["view_a"], item["view_b"]):
            assert view.shape == (512, 4) and view.dtype == np.float32
            assert np.isin(view[:, 3], scaled).all()  # every point keeps its own intensity through the crops
            assert view[:, 3].min() >= 0.0 and view[:, 3].max() <= 1.0


def test_a_run_reading_intensity_refuses_shards_without_it(lidar_results: Path):
    views = PointViews(build_transforms((TransformSpec("resample", {"npoints": 64}),)), InputFeatures(("intensity",)))
    with pytest.raises(ConfigError, match=r"demo_indoor: the backbone reads \['intensity'\].*features: rgb"):
        TwoViewDataset([lidar_results / "shards/demo_indoor"], 0, point=views)


def test_a_fixed_intensity_max_divides_every_cloud_alike():
    features = np.array([[0.0], [1000.0], [65535.0]], np.float32)
    by_constant = InputFeatures(("intensity",), 65535.0).columns(3, features, ["intensity"], [1], "x")
    by_cloud = InputFeatures(("intensity",)).columns(3, features / 2, ["intensity"], [1], "x")
    np.testing.assert_allclose(by_constant[:, 0], [0.0, 1000 / 65535, 1.0])
    np.testing.assert_allclose(by_cloud[:, 0], [0.0, 1000 / 65535, 1.0])


@pytest.fixture(scope="module")
def trained(lidar_results: Path) -> Path:
    out = lidar_results.parent / "pretrain_msg"
    config = lidar_results.parent / "config.yaml"
    done = run_cli("pretrain", "msg", "--config", str(config), "--results", str(lidar_results), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_tiny_msg_run_trains_on_cpu_in_the_trainer(trained: Path, lidar_results: Path):
    state, first_epoch = load_checkpoint(trained / "last.pth"), load_checkpoint(trained / "checkpoint-ep1.pth")
    assert state["epoch"] == 2 and state["config"]["backbone"]["name"] == "pointnet2_msg"
    steps = 2 * (len(ShardDataset(lidar_results / "shards/demo_lidar")) // 4)
    with open(trained / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == steps and all(math.isfinite(float(row["loss"])) for row in rows)
    prefix = "query_encoders.point."
    assert {k.split(".")[2] for k in state["model"] if k.startswith(prefix)} == {"SA_modules", "FP_modules", "head"}
    weight = f"{prefix}SA_modules.0.mlps.0.0.weight"
    assert state["model"][weight].shape == (16, 4, 1, 1)  # x, y, z + intensity, as PointRCNN on KITTI
    assert not torch.equal(state["model"][weight], first_epoch["model"][weight])  # the second epoch changed it
    assert int(state["model"][f"{prefix}FP_modules.0.mlp.1.num_batches_tracked"]) == steps


def test_the_trained_run_exports_to_openpcdet_and_fits_pointrcnns_backbone(trained: Path, tmp_path: Path):
    weights, sidecar = export_checkpoint(trained / "last.pth", "openpcdet", tmp_path)
    model_state = torch.load(weights, weights_only=True)["model_state"]
    assert {k: tuple(v.shape) for k, v in model_state.items()} == {
        f"backbone_3d.{k}": shape for k, shape in pointrcnn_backbone_shapes(4).items()
    }
    meta = json.loads(sidecar.read_text())
    assert meta["downstream_config"]["BACKBONE_3D"]["SA_CONFIG"]["NPOINTS"] == [128, 64, 32, 16]
    assert meta["missing_keys"] == [] and meta["unexpected_keys"] == []


def test_the_evaluation_takes_the_msg_backbone_and_its_intensity_from_the_run(trained: Path, lidar_results: Path):
    settings = {
        "seeds": [0],
        "points": 256,
        "protocols": ["linear"],
        "linear": {"epochs": 1, "lr": 0.01, "batch_size": 8, "momentum": 0.9, "weight_decay": 0.0},
    }
    tasks = {
        "demo_lidar": {"kind": "lidar_segmentation", "test_groups": ["cgal_b9", "cgal_urban"], "zeros": []},
        "demo_indoor": {"kind": "indoor_segmentation", "test_groups": ["room_06", "room_07"], "zeros": ["intensity"]},
    }
    for dataset, task in tasks.items():
        spec = {"dataset": dataset, "kind": task["kind"], "test_groups": task["test_groups"], "xyz_scale": 1.0}
        metrics = run_evaluation("t", spec, settings, lidar_results / "shards" / dataset, trained / "last.pth",
                                 lidar_results.parent / "eval" / dataset)  # fmt: skip
        assert metrics["backbone"]["name"] == "pointnet2_msg" and metrics["backbone"]["features"] == ["intensity"]
        assert metrics["backbone"]["features_read_as_zeros"] == task["zeros"]
        assert 0.0 <= metrics["results"]["linear"]["pretrained"]["miou"]["mean"] <= 1.0


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_the_triton_ops_pick_the_cpu_points_and_bf16_training_stays_finite():
    torch.manual_seed(0)
    model = PointNet2MSG(npoints=[1024, 256, 64, 16]).eval()
    cloud = lidar_cloud(2, 4096, 5)
    with torch.no_grad():
        cpu = model(cloud)
        gpu = model.cuda()(cloud.cuda())
    for level in range(1, 5):
        assert torch.equal(cpu[f"sa{level}_inds"], gpu[f"sa{level}_inds"].cpu()), level  # same FPS, bit for bit
    torch.testing.assert_close(cpu["fp2_features"], gpu["fp2_features"].cpu(), atol=1e-3, rtol=1e-3)
    encoder = PointNetMSGEncoder(npoints=[1024, 256, 64, 16]).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = encoder(cloud.cuda()).float().pow(2).mean()
    loss.backward()
    grad = encoder.SA_modules[0].mlps[0][0].weight.grad
    assert torch.isfinite(loss) and grad is not None and torch.isfinite(grad).all()
