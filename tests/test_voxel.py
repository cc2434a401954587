"""The voxel stack: LiDAR voxelisation (MeanVFE), Part-A2's sparse UNet on spconv (CPU), voxel-only and
joint point + voxel pretraining through the trainer, and the trained sparse UNet exported to OpenPCDet."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.config import validate_config
from depthcontrast.data.views import build_view_dataset, collate_views
from depthcontrast.data.voxelize import VoxelGrid, collate_voxels, voxelize
from depthcontrast.errors import ConfigError
from depthcontrast.export import export_checkpoint
from depthcontrast.specs import parse_run
from tests.conftest import run_cli

spconv_ops = pytest.importorskip("spconv.pytorch.ops", reason="the voxel extra (spconv) is not installed")

from depthcontrast.models.spconv_unet import UNetV2, UNetV2Encoder, min_sparse_depth  # noqa: E402

SMALL_GRID = VoxelGrid(voxel_size=(0.1, 0.1, 0.2), point_range=(0.0, 0.0, 0.0, 3.2, 3.2, 1.8))


def cloud(n: int, seed: int, grid: VoxelGrid = SMALL_GRID, margin: float = 0.0) -> np.ndarray:
    """n points x, y, z, intensity, uniform in the grid's range widened by `margin` metres."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(grid.point_range[:3]) - margin, np.asarray(grid.point_range[3:]) + margin
    return np.concatenate([rng.uniform(low, high, (n, 3)), rng.uniform(0, 1, (n, 1))], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------- voxelisation
def reference_voxels(points: np.ndarray, grid: VoxelGrid) -> dict[tuple[int, int, int], list[int]]:
    """(z, y, x) → indices of the points in it, in point order, points outside the range left out (a loop)."""
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    low, size, shape = np.asarray(grid.point_range[:3]), np.asarray(grid.voxel_size), grid.grid_size
    for i, p in enumerate(points):
        x, y, z = (int(v) for v in np.floor((p[:3] - low.astype(np.float32)) / size.astype(np.float32)))
        if 0 <= x < shape[0] and 0 <= y < shape[1] and 0 <= z < shape[2]:
            groups[(z, y, x)].append(i)
    return groups


def test_each_voxel_holds_the_mean_of_exactly_its_first_points_and_nothing_outside_the_range():
    grid = VoxelGrid(voxel_size=(0.4, 0.4, 0.4), point_range=(0.0, 0.0, 0.0, 1.6, 1.6, 0.8), max_points_per_voxel=5)
    points = cloud(2000, 0, grid, margin=0.5)  # dense: most voxels exceed 5 points; some points fall outside
    voxels = voxelize(points, grid)
    groups = reference_voxels(points, grid)
    assert len(voxels.coords) == len(groups)
    assert any(len(members) > 5 for members in groups.values())
    for coord, feature, count in zip(voxels.coords, voxels.features, voxels.num_points, strict=True):
        members = groups[tuple(int(c) for c in coord)][:5]  # the cap keeps the first 5 in point order
        assert count == len(members)
        np.testing.assert_allclose(feature, points[members].mean(axis=0), rtol=1e-6, atol=1e-6)
    assert voxels.coords.dtype == np.int32 and voxels.features.dtype == np.float32
    assert (voxels.coords >= 0).all() and (voxels.coords < grid.grid_size[::-1]).all()  # (z, y, x) within the grid


def test_voxels_come_in_first_point_order_and_max_voxels_keeps_the_first():
    points = cloud(3000, 1)
    full = voxelize(points, SMALL_GRID)
    capped = voxelize(points, VoxelGrid(SMALL_GRID.voxel_size, SMALL_GRID.point_range, max_voxels=100))
    assert len(full.coords) > 100 and len(capped.coords) == 100
    np.testing.assert_array_equal(capped.coords, full.coords[:100])
    np.testing.assert_array_equal(capped.features, full.features[:100])
    first_point = voxelize(points[:1], SMALL_GRID)
    np.testing.assert_array_equal(first_point.coords[0], full.coords[0])


def test_voxelisation_is_deterministic_and_the_seeds_grid_gives_its_sparse_shape():
    points = cloud(5000, 2)
    a, b = voxelize(points, SMALL_GRID), voxelize(points.copy(), SMALL_GRID)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("features", "coords", "num_points"))
    seed = VoxelGrid()  # [0.1, 0.1, 0.2] m over the original's UNetV2 range [0, -75, -3, 75, 75, 3]
    assert seed.grid_size.tolist() == [750, 1500, 30] and seed.sparse_shape == [31, 1500, 750]
    assert (seed.max_points_per_voxel, seed.max_voxels) == (5, 16000)


def test_collated_voxels_carry_the_batch_index_first():
    clouds = [voxelize(cloud(500 * (i + 1), i), SMALL_GRID) for i in range(3)]
    batch = collate_voxels(clouds)
    coords = batch["coords"].numpy()
    assert batch["batch_size"] == 3 and coords.shape[1] == 4
    for i, voxels in enumerate(clouds):
        np.testing.assert_array_equal(coords[coords[:, 0] == i, 1:], voxels.coords)
    assert torch.equal(batch["features"], torch.from_numpy(np.concatenate([v.features for v in clouds])))


def test_a_bad_grid_is_a_config_error():
    with pytest.raises(ConfigError, match="max > min"):
        VoxelGrid(point_range=(0, 0, 0, 1, -1, 1))
    with pytest.raises(ConfigError, match="voxel_size"):
        VoxelGrid(voxel_size=(0.1, 0.0, 0.2))


# ----------------------------------------------------------------------------------- sparse UNet
def test_spconvs_cpu_stream_lookup_is_patched_so_backward_runs_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("the patch applies only without CUDA")
    assert spconv_ops.get_current_stream() == 0
    torch.manual_seed(0)
    model = UNetV2Encoder(4, SMALL_GRID.sparse_shape)
    batch = collate_voxels([voxelize(cloud(1500, i), SMALL_GRID) for i in range(2)])
    model(batch).square().sum().backward()
    grad = model.conv_input[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_unet_matches_openpcdets_unetv2_names_shapes_and_batchnorm_settings():
    from depthcontrast.export.openpcdet_reference import OpenPCDetUNetV2

    ours = UNetV2(4, SMALL_GRID.sparse_shape).state_dict()
    reference = OpenPCDetUNetV2(4).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert ours["conv_input.0.weight"].shape == (16, 3, 3, 3, 4)  # spconv 2.x: [out, k, k, k, in]
    assert ours["conv_up_m4.0.weight"].shape == (64, 3, 3, 3, 128)
    assert ours["inv_conv2.0.weight"].shape == (16, 3, 3, 3, 32)
    norms = [m for m in UNetV2(4, SMALL_GRID.sparse_shape).modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)


@pytest.fixture
def one_thread():
    """spconv 2.3.8's CPU convolutions lose a sum now and then when torch runs several threads (rows off by
    ~1e-3 run to run, seen on a 2-core machine); comparisons between two forward passes run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_each_samples_embedding_depends_on_its_own_voxels_only():
    torch.manual_seed(0)
    model = UNetV2Encoder(4, SMALL_GRID.sparse_shape).eval()
    points = [cloud(800, i) for i in range(3)]
    points[1] = points[1][points[1][:, 0] < 1.0]  # a narrow strip
    points[2][:, 3] *= 8.0  # bright
    clouds = [voxelize(p, SMALL_GRID) for p in points]
    with torch.no_grad():
        together = model(collate_voxels(clouds))
        alone = torch.cat([model(collate_voxels([c])) for c in clouds])
    assert together.shape == (3, 128)
    # equal up to float summation order (spconv gathers the batch's voxels together); samples differ far more
    torch.testing.assert_close(together, alone, rtol=1e-3, atol=1e-3)
    rounding = (together - alone).abs().max()
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert (together[i] - together[j]).abs().max() > 10 * rounding


def test_a_grid_too_shallow_for_three_downsamplings_is_a_config_error():
    assert min_sparse_depth() == 9
    with pytest.raises(ConfigError, match="at least 9"):
        UNetV2(4, [8, 32, 32])


# ----------------------------------------------------------------------------------- config
def run_config(**run) -> dict:
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}}, "pretrain": {"r": run}}
    return validate_config(config)["pretrain"]["r"]


def test_a_run_without_a_voxel_block_trains_points_and_the_voxel_representation_needs_one():
    plain = run_config(datasets=["d"])
    assert plain["representations"] == ["point"] and "voxel_backbone" not in plain
    assert parse_run(plain).representations == ("point",) and parse_run(plain).voxel_backbone is None
    voxel = run_config(datasets=["d"], representations=["voxel"], voxel_backbone={})
    assert voxel["voxel_backbone"]["name"] == "spconv_unet" and voxel["voxel_backbone"]["voxel_size"] == [0.1, 0.1, 0.2]
    assert parse_run(voxel).backbone is None  # a voxel-only run has no point encoder
    joint = run_config(datasets=["d"], representations=["voxel", "point"], voxel_backbone={})
    assert parse_run(joint).representations == ("point", "voxel")  # point first, whatever the config's order
    with pytest.raises(ConfigError, match="no voxel_backbone"):
        run_config(datasets=["d"], representations=["voxel"])
    with pytest.raises(ConfigError, match="voxel_backbone"):
        run_config(datasets=["d"], representations=["voxel"], voxel_backbone={"voxel_sise": [1, 1, 1]})


# ----------------------------------------------------------------------------------- training + export
VOXEL_BLOCK = {"voxel_size": [1.0, 1.0, 1.0], "point_range": [-160, -160, -20, 160, 160, 60], "max_voxels": 3000}
VOXEL_RUN = {
    "datasets": ["demo_lidar"],
    "representations": ["voxel"],
    "voxel_backbone": VOXEL_BLOCK,
    "augmentations": "lidar",
    "augmentation_overrides": {"random_cuboid_lidar": {"npoints": 500}},
    "points_per_view": 512,
    "batch_size": 4,
    "epochs": 2,
    "optimizer": {"lr": 0.03},
    "loss": {"num_negatives": 16},
    "num_workers": 0,
    "checkpoint_every_epochs": 1,
    "log_every_steps": 1,
    "export_targets": ["openpcdet"],
}
JOINT_RUN = {  # the original's LiDAR joint pair: PointNet-MSG (radii for the aerial crops) + the sparse UNet
    **VOXEL_RUN,
    "representations": ["point", "voxel"],
    "backbone": {
        "name": "pointnet2_msg",
        "npoints": [128, 64, 32, 16],
        "radius": [[1.5, 3.0], [3.0, 6.0], [6.0, 12.0], [12.0, 24.0]],
        "nsample": [[8, 16]] * 4,
    },
    "augmentation_overrides": {"random_cuboid_lidar": {"npoints": 500}, "resample_lidar": {"far_range": 1000000}},
    "epochs": 1,
    "loss": {"num_negatives": 16, "loss_types": ["NPID", "CMC"], "across_format_weights": [0.5, 0.5]},
}


DETERMINISTIC_RUN = {**VOXEL_RUN, "epochs": 1, "deterministic": True}
RUNS = {"unet": VOXEL_RUN, "joint": JOINT_RUN, "unet_det": DETERMINISTIC_RUN}


@pytest.fixture(scope="module")
def lidar_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("voxel") / "results"
    config = results.parent / "config.yaml"
    datasets = {"demo_lidar": {"source": {"kind": "builtin", "subset": "lidar"}, "preprocess": {"max_points": 4000}}}
    config.write_text(yaml.safe_dump({"datasets": datasets, "pretrain": RUNS}))
    for stage in ("download", "preprocess"):
        done = run_cli(stage, "--config", str(config), "--dataset", "demo_lidar", "--results", str(results))
        assert done.returncode == 0, done.stderr
    return results


def validated(results: Path, run: str) -> dict:
    return validate_config(yaml.safe_load((results.parent / "config.yaml").read_text()))["pretrain"][run]


def test_voxel_views_are_two_voxelised_augmentations_with_mean_intensity(lidar_results: Path):
    dataset = build_view_dataset([lidar_results / "shards/demo_lidar"], parse_run(validated(lidar_results, "unet")))
    item = dataset[0]
    assert set(item) == {"index", "voxel_a", "voxel_b"}  # a voxel-only run makes no point views
    for view in (item["voxel_a"], item["voxel_b"]):
        assert view.features.shape[1] == 4 and 0 < len(view.coords) <= 3000
        assert view.features[:, 3].min() >= 0.0 and view.features[:, 3].max() <= 1.0
    assert not np.array_equal(item["voxel_a"].features, item["voxel_b"].features)
    again = dataset[0]
    assert np.array_equal(again["voxel_a"].features, item["voxel_a"].features)
    batch = collate_views([dataset[0], dataset[1]])
    assert batch["voxel_a"]["batch_size"] == 2 and batch["index"].tolist() == [0, 1]


def test_adding_the_voxel_representation_leaves_the_point_views_unchanged(lidar_results: Path):
    joint = validated(lidar_results, "joint")
    point_only = {**joint, "representations": ["point"]}
    with_voxels = build_view_dataset([lidar_results / "shards/demo_lidar"], parse_run(joint))[3]
    without = build_view_dataset([lidar_results / "shards/demo_lidar"], parse_run(point_only))[3]
    assert "voxel_a" not in without
    assert np.array_equal(with_voxels["view_a"], without["view_a"])
    assert {"voxel_a", "voxel_b"} <= set(with_voxels)


@pytest.fixture(scope="module")
def trained(lidar_results: Path) -> Path:
    out = lidar_results.parent / "pretrain_unet"
    config = lidar_results.parent / "config.yaml"
    done = run_cli("pretrain", "unet", "--config", str(config), "--results", str(lidar_results), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def metric_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_voxel_only_run_trains_the_sparse_unet_on_cpu_in_the_trainer(trained: Path, lidar_results: Path):
    state, first = load_checkpoint(trained / "last.pth"), load_checkpoint(trained / "checkpoint-ep1.pth")
    rows = metric_rows(trained / "metrics.csv")
    assert state["epoch"] == 2 and len(rows) == 2 * (26 // 4)  # 26 built-in LiDAR crops, batch 4
    assert all(math.isfinite(float(row["loss"])) and row["npid"] for row in rows)
    parts = {k.split(".")[0] for k in state["model"]}
    assert parts == {"query_encoders", "key_encoders", "queue_voxel", "queue_ptr_voxel"}
    weight = "query_encoders.voxel.conv_input.0.weight"
    assert state["model"][weight].shape == (16, 3, 3, 3, 4)  # x, y, z, intensity means (MeanVFE)
    assert not torch.equal(state["model"][weight], first["model"][weight])
    assert int(state["model"]["query_encoders.voxel.conv5.0.1.num_batches_tracked"]) == len(rows)


def test_the_trained_unet_exports_to_openpcdet_part_a2(trained: Path, tmp_path: Path):
    weights, sidecar = export_checkpoint(trained / "last.pth", "openpcdet", tmp_path)
    file = torch.load(weights, weights_only=True)
    source = load_checkpoint(trained / "last.pth")["model"]
    assert file["model_state"]["backbone_3d.conv_input.0.weight"].shape == (16, 3, 3, 3, 4)
    exported = file["model_state"]["backbone_3d.conv5.0.0.weight"]
    assert torch.equal(exported, source["query_encoders.voxel.conv5.0.0.weight"])
    meta = json.loads(sidecar.read_text())
    assert meta["missing_keys"] == [] and meta["unexpected_keys"] == []
    assert meta["downstream_config"]["BACKBONE_3D"] == {"NAME": "UNetV2", "RETURN_ENCODED_TENSOR": False}
    assert meta["downstream_config"]["VOXEL_SIZE"] == [1.0, 1.0, 1.0]


def test_a_joint_point_and_voxel_run_trains_with_the_four_terms(lidar_results: Path):
    out = lidar_results.parent / "pretrain_joint"
    config = lidar_results.parent / "config.yaml"
    done = run_cli("pretrain", "joint", "--config", str(config), "--results", str(lidar_results), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = metric_rows(out / "metrics.csv")
    assert len(rows) == 26 // 4
    for row in rows:
        terms = {name: float(row[name]) for name in ("npid", "npid_other", "cmc_p2i", "cmc_i2p")}
        assert all(math.isfinite(v) for v in terms.values())
        expected = terms["npid"] + 1.0 * terms["npid_other"] + 0.5 * (terms["cmc_p2i"] + terms["cmc_i2p"])
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-4)
    state = load_checkpoint(out / "last.pth")
    assert {"queue_point", "queue_voxel"} <= set(state["model"])
    assert any(k.startswith("query_encoders.point.SA_modules") for k in state["model"])
    assert any(k.startswith("query_encoders.voxel.conv_up_t4") for k in state["model"])


def test_voxel_keys_are_not_batch_shuffled_and_a_joint_run_defaults_to_the_original_lidar_terms():
    from depthcontrast.train import build_model

    settings = {"datasets": ["d"], "voxel_backbone": {}, "loss": {"num_negatives": 8}}
    voxel_only = build_model(parse_run(run_config(**settings, representations=["voxel"])))
    assert voxel_only.representations == ("voxel",) and voxel_only.shuffle_keys == {"voxel": False}
    assert voxel_only.term_weights == {"npid": 1.0}
    joint = build_model(parse_run(run_config(**settings, representations=["point", "voxel"])))
    assert joint.shuffle_keys == {"point": True, "voxel": False}
    assert joint.term_weights == {"npid": 1.0, "npid_other": 1.0}  # point_vox_lidar_template: NPID, weights 1 / 1


def test_without_spconv_a_voxel_run_is_one_error_naming_the_extra(tmp_path: Path):
    script = (
        "import sys; sys.modules['spconv'] = None; sys.modules['spconv.pytorch'] = None\n"
        "from depthcontrast.errors import DepthContrastError\n"
        "from depthcontrast.models.encoders import build_voxel_encoder\n"
        "from depthcontrast.specs import voxel_backbone\n"
        "try:\n"
        "    block = {'name': 'spconv_unet', 'voxel_size': [0.1, 0.1, 0.2], 'features': [],\n"
        "             'point_range': [0, 0, 0, 3.2, 3.2, 1.8], 'max_points_per_voxel': 5, 'max_voxels': 10}\n"
        "    build_voxel_encoder(voxel_backbone(block), 128)\n"
        "except DepthContrastError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert "\n" not in message and "cannot import spconv" in message
    assert ".[voxel]" in message and "docker/spconv" in message


def test_a_deterministic_voxel_run_is_bit_reproducible_on_cpu(lidar_results: Path):
    config = lidar_results.parent / "config.yaml"
    states = []
    for attempt in (1, 2):
        out = lidar_results.parent / f"pretrain_det{attempt}"
        args = ("--config", str(config), "--results", str(lidar_results), "--out", str(out))
        done = run_cli("pretrain", "unet_det", *args)
        assert done.returncode == 0, done.stderr
        states.append(load_checkpoint(out / "last.pth")["model"])
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


# ----------------------------------------------------------------------------------- MinkUNet34 (indoor)
def test_minkunet_has_res16unet34s_names_and_shapes_with_spconv_weights_and_the_seeds_batchnorm():
    from depthcontrast.models.minkunet import MinkUNet34Encoder
    from tests.test_export import res16unet34_shapes

    encoder = MinkUNet34Encoder(3, [16, 16, 16])
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    expected = {}
    for key, shape in res16unet34_shapes(3).items():
        if key.endswith(".kernel"):  # MinkowskiEngine's `kernel` [k³, in, out] is spconv's `weight` [out, k, k, k, in]
            k = round(shape[0] ** (1 / 3)) if len(shape) == 3 else 1
            expected[key[: -len("kernel")] + "weight"] = (shape[-1], k, k, k, shape[-2])
        else:
            expected[key] = shape
    assert ours == expected
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items() if k.startswith("head.")} == {
        "head.clf.0.weight": (256, 256), "head.clf.0.bias": (256,), "head.clf.2.weight": (128, 256),
        "head.clf.2.bias": (128,),
    }  # fmt: skip
    biases = [name for name, _ in encoder.named_parameters() if name.endswith("bias") and not name.startswith("head.")]
    assert biases and all(name.endswith(".bn.bias") for name in biases)  # no conv has a bias
    assert encoder.bn0.bn.momentum == 0.02 and encoder.block4[0].downsample[1].bn.momentum == 0.02
    assert encoder.block1[0].norm1.bn.momentum == 0.1 and encoder.bntr7.bn.eps == 1e-5


@pytest.mark.usefixtures("one_thread")
def test_minkunet_embeddings_depend_on_each_samples_own_voxels_and_its_grid_is_padded_to_16s():
    from depthcontrast.models.minkunet import MinkUNet34, MinkUNet34Encoder

    torch.manual_seed(0)
    encoder = MinkUNet34Encoder(3, [16, 16, 16]).eval()
    rng = np.random.default_rng(0)
    clouds = [np.unique(rng.integers(0, 16, (60, 3)), axis=0) for _ in range(2)]
    coords = torch.from_numpy(np.concatenate([np.c_[np.full(len(c), b), c] for b, c in enumerate(clouds)])).int()
    features = torch.rand(len(coords), 6)  # mean x, y, z, then r, g, b
    with torch.no_grad():
        both = encoder({"features": features, "coords": coords, "batch_size": 2})
        first = coords[:, 0] == 0
        alone = encoder({"features": features[first], "coords": coords[first], "batch_size": 1})
        moved = features + torch.tensor([5.0, 5, 5, 0, 0, 0])
        moved_xyz = encoder({"features": moved, "coords": coords, "batch_size": 2})
    assert both.shape == (2, 128)
    torch.testing.assert_close(both[:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both, moved_xyz)  # the mean x, y, z columns are not read: RGB only
    assert MinkUNet34(3, [17, 8, 40]).sparse_shape == [32, 16, 48]  # padded: every voxel keeps a parent


MINKUNET_RUN = {
    "datasets": ["demo_indoor"],
    "representations": ["voxel"],
    "voxel_backbone": {"name": "minkunet", "voxel_size": [0.8, 0.8, 0.8], "point_range": [-12.8] * 3 + [12.8] * 3},
    "augmentation_overrides": {"random_cuboid": {"npoints": 200}},
    "points_per_view": 256,
    "batch_size": 24,
    "epochs": 1,
    "optimizer": {"lr": 0.03},
    "loss": {"num_negatives": 48},
    "num_workers": 0,
    "checkpoint_every_epochs": 1,
    "log_every_steps": 1,
}


@pytest.fixture(scope="module")
def minkunet_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("minkunet") / "results"
    config = results.parent / "config.yaml"
    datasets = {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}, "preprocess": {"max_points": 1500}}}
    config.write_text(yaml.safe_dump({"datasets": datasets, "pretrain": {"mink": MINKUNET_RUN}}))
    for stage in ("download", "preprocess"):
        done = run_cli(stage, "--config", str(config), "--dataset", "demo_indoor", "--results", str(results))
        assert done.returncode == 0, done.stderr
    out = results.parent / "pretrain_mink"
    done = run_cli("pretrain", "mink", "--config", str(config), "--results", str(results), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_minkunet_run_trains_two_cpu_steps_on_the_indoor_rgb_voxels(minkunet_trained: Path):
    state = load_checkpoint(minkunet_trained / "last.pth")
    rows = metric_rows(minkunet_trained / "metrics.csv")
    assert len(rows) == 2 and all(math.isfinite(float(row["loss"])) for row in rows)  # 48 frames, batch 24
    weight = state["model"]["query_encoders.voxel.conv0p1s1.weight"]
    assert weight.shape == (32, 3, 3, 3, 3)  # RGB in
    assert int(state["model"]["query_encoders.voxel.bntr7.bn.num_batches_tracked"]) == 2
    assert state["config"]["voxel_backbone"]["features"] == ["rgb"]


def test_the_trained_minkunet_exports_to_spatiotemporalsegmentation(minkunet_trained: Path, tmp_path: Path):
    weights, sidecar = export_checkpoint(minkunet_trained / "last.pth", "minkunet_seg", tmp_path)
    file = torch.load(weights, weights_only=True)
    assert file["state_dict"]["conv0p1s1.kernel"].shape == (27, 3, 32)
    assert file["state_dict"]["block8.1.norm2.bn.num_batches_tracked"] == 2
    meta = json.loads(sidecar.read_text())
    assert meta["missing_keys"] == [] == meta["unexpected_keys"]
    assert meta["downstream_config"]["voxel_size"] == [0.8] * 3


def test_rgb_voxel_features_are_read_as_the_seeds_rgb_over_255_minus_half():
    from depthcontrast.data.point_features import InputFeatures

    stored = np.array([[7, 0, 128, 255], [9, 255, 255, 0]], dtype=np.uint8)  # columns: intensity, r, g, b
    rgb = InputFeatures(("rgb",)).columns(2, stored, ["intensity", "rgb"], [1, 3], "x")
    np.testing.assert_allclose(rgb, [[-0.5, 128 / 255 - 0.5, 0.5], [0.5, 0.5, -0.5]], atol=1e-6)
    assert InputFeatures(("rgb",)).channels == 3
