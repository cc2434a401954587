"""The built-in downstream evaluation: group-disjoint splits, class merging, metrics, checkpoint loading,
and metrics.json from a tiny run on the real built-in shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from depthcontrast.checkpoint import CheckpointError, save_checkpoint
from depthcontrast.config import validate_config
from depthcontrast.errors import DataError
from depthcontrast.evaluate import run_evaluation
from depthcontrast.evaluate.backbone import backbone_from_checkpoint
from depthcontrast.evaluate.metrics import compare, confusion_matrix, segmentation_scores
from depthcontrast.evaluate.protocols import (
    Clouds,
    backbone_features,
    estimate_bn_statistics,
    finetune,
    linear_probe,
    resample,
    scores_at_inputs,
)
from depthcontrast.evaluate.tasks import (
    IGNORE_LABEL,
    LIDAR_CLASSES,
    Samples,
    Split,
    indoor_room,
    lidar_tile,
    load_samples,
    merge_indoor_labels,
    merge_lidar_labels,
    split_by_group,
    task_kind,
)
from depthcontrast.models.pointnet2 import PointNet2SSG
from depthcontrast.specs import TrainSettings, parse_run
from depthcontrast.train import build_model
from tests.conftest import run_cli

TINY_BACKBONE = {"npoints": [64, 32, 16, 8], "head_dims": [512, 64, 32]}
TINY_SETTINGS = {
    "seeds": [0, 1],
    "points": 256,
    "protocols": ["linear", "finetune"],
    "linear": {"epochs": 2, "lr": 0.01, "batch_size": 8, "momentum": 0.9, "weight_decay": 0.0},
    "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 8, "momentum": 0.9, "weight_decay": 0.0},
}
LIDAR_TEST_TILES = ["cgal_b9", "cgal_urban"]
INDOOR_TEST_ROOMS = ["room_06", "room_07"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/shards/ with both built-in datasets preprocessed (labels kept)."""
    results = tmp_path_factory.mktemp("evaluate") / "results"
    config = results.parent / "config.yaml"
    datasets = {
        name: {"source": {"kind": "builtin", "subset": subset}, "preprocess": {"max_points": 4000, "min_points": 500}}
        for name, subset in (("demo_lidar", "lidar"), ("demo_indoor", "indoor"))
    }
    config.write_text(yaml.safe_dump({"datasets": datasets}))
    for dataset in datasets:
        for stage in ("download", "preprocess"):
            done = run_cli(stage, "--config", str(config), "--dataset", dataset, "--results", str(results))
            assert done.returncode == 0, done.stderr
    return results / "shards"


def _tiny_run() -> dict:
    config = {
        "datasets": {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}}},
        "pretrain": {"tiny": {"datasets": ["demo_indoor"], "backbone": TINY_BACKBONE, "loss": {"embedding_dim": 32}}},
    }
    return validate_config(config)["pretrain"]["tiny"]


def _save(path: Path, model_state: dict, run: dict) -> Path:
    save_checkpoint(path, {"model": model_state, "optimizer": {}, "epoch": 1, "step": 1, "config": run})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A checkpoint of our layout (DepthContrast state_dict + resolved run config) and its model."""
    run = _tiny_run()
    torch.manual_seed(1234)  # not a seed the evaluation uses: "pretrained" weights differ from scratch ones
    model = build_model(parse_run(run))
    return _save(tmp_path_factory.mktemp("ckpt") / "last.pth", model.state_dict(), run), model


def test_lidar_crop_tile_is_its_name_without_the_cell_suffix_or_a_corpus_crop_folder():
    assert lidar_tile("demo_lidar/lidar/autzen_3_1") == "autzen"
    assert lidar_tile("demo_lidar/lidar/append_bug_0_27") == "append_bug"
    assert lidar_tile("corpus_lidar/wkt_geotiff/crop_00012") == "wkt_geotiff"
    for name in ("demo_lidar/lidar/autzen", "crop_00012", "corpus_lidar/autzen/crop_x"):
        with pytest.raises(DataError, match="cannot tell its tile"):
            lidar_tile(name)
    assert indoor_room("demo_indoor/indoor/room_03/000002") == "room_03"


@pytest.mark.parametrize(
    ("dataset", "kind", "test_groups"),
    [("demo_lidar", "lidar_segmentation", LIDAR_TEST_TILES), ("demo_indoor", "indoor_segmentation", INDOOR_TEST_ROOMS)],
)
def test_split_puts_every_tile_or_room_on_one_side_only(shards: Path, dataset: str, kind: str, test_groups: list):
    samples = load_samples(shards / dataset, task_kind(kind))
    split = split_by_group(samples, test_groups, task_kind(kind).group_name, "test")
    assert set(split.test.groups) == set(test_groups)
    assert not set(split.train.groups) & set(split.test.groups)
    assert not set(split.train.sample_ids) & set(split.test.sample_ids)
    assert sorted(split.train.sample_ids + split.test.sample_ids) == sorted(samples.sample_ids)
    group_of = task_kind(kind).group_of
    assert all(group_of(sid) in test_groups for sid in split.test.sample_ids)


def test_a_split_sharing_a_room_is_refused():
    cloud, labels = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    train = Samples([cloud], [labels], ["d/indoor/room_00/000000"], ["room_00"])
    test = Samples([cloud], [labels], ["d/indoor/room_00/000001"], ["room_00"])
    with pytest.raises(DataError, match=r"overlap.*room_00"):
        Split(train, test).check_disjoint("room")


def test_unknown_or_all_test_groups_are_reported(shards: Path):
    kind = task_kind("lidar_segmentation")
    samples = load_samples(shards / "demo_lidar", kind)
    with pytest.raises(DataError, match=r"\['nowhere'\] not in the data"):
        split_by_group(samples, ["nowhere"], "tile", "evaluate.tasks.t")
    with pytest.raises(DataError, match="nothing is left to train on"):
        split_by_group(samples, sorted(set(samples.groups)), "tile", "evaluate.tasks.t")


def test_with_another_datasets_training_samples_every_group_may_test_but_none_may_train_too(shards: Path):
    kind = task_kind("lidar_segmentation")
    samples = load_samples(shards / "demo_lidar", kind)
    cloud, labels = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    other = Samples([cloud], [labels], ["corpus/elsewhere/crop_00000"], ["elsewhere"])
    split = split_by_group(samples, sorted(set(samples.groups)), "tile", "evaluate.tasks.t", train=other)
    assert split.train is other and sorted(split.test.sample_ids) == sorted(samples.sample_ids)
    shared = Samples([cloud], [labels], ["corpus/autzen/crop_00000"], ["autzen"])
    with pytest.raises(DataError, match=r"overlap.*autzen"):
        split_by_group(samples, sorted(set(samples.groups)), "tile", "evaluate.tasks.t", train=shared)


def test_asprs_codes_merge_into_ground_vegetation_building_other():
    asprs = np.array([2, 3, 4, 5, 6, 17, 65, 9, 1, 0, 7, 18])
    names = [LIDAR_CLASSES[c] if c != IGNORE_LABEL else None for c in merge_lidar_labels(asprs)]
    expected = ["ground", *["vegetation"] * 3, "building", *["other"] * 3, *[None] * 4]
    assert names == expected
    with pytest.raises(DataError, match="ASPRS"):
        merge_lidar_labels(np.array([256]))


def test_indoor_objects_merge_into_one_class_and_no_return_is_ignored():
    merged = merge_indoor_labels(np.arange(8))
    assert merged.tolist() == [IGNORE_LABEL, 0, 1, 2, 3, 4, 4, 4]


def test_miou_and_accuracy_match_a_hand_computed_example():
    truth = np.array([0, 0, 1, 1, 2, IGNORE_LABEL])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    scores = segmentation_scores(confusion_matrix(truth, predicted, 4), ["a", "b", "c", "d"])
    # a: TP 1, union 3; b: TP 2, union 3; c: TP 0, union 1; d: absent from the truth, left out
    assert scores["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0, "d": None})
    assert scores["miou"] == pytest.approx(1 / 3)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["points"] == 5


def test_a_difference_is_within_noise_only_up_to_the_larger_std():
    assert compare({"mean": 0.50, "std": 0.01}, {"mean": 0.45, "std": 0.06}, seeds=3)["within_noise"]
    beyond = compare({"mean": 0.60, "std": 0.01}, {"mean": 0.45, "std": 0.06}, seeds=3)
    assert not beyond["within_noise"] and beyond["difference"] == pytest.approx(0.15)
    assert compare({"mean": 0.9, "std": 0.0}, {"mean": 0.1, "std": 0.0}, seeds=1)["within_noise"]


def test_pretrained_features_are_the_checkpoint_encoders_and_scratch_ones_differ(shards: Path, checkpoint):
    path, model = checkpoint
    spec = backbone_from_checkpoint(path)
    samples = load_samples(shards / "demo_indoor", task_kind("indoor_segmentation"))
    clouds = resample(samples, 256, np.random.default_rng(0))
    xyz = clouds.xyz[:4]
    pretrained, inds = backbone_features(spec.build(pretrained=True), xyz, 4, torch.device("cpu"))
    encoder = model.query_encoders["point"].eval()
    with torch.no_grad():
        reference = PointNet2SSG.forward(encoder, torch.from_numpy(xyz))
    torch.testing.assert_close(pretrained, reference["fp2_features"])
    assert torch.equal(inds, reference["fp2_inds"])
    torch.manual_seed(0)
    scratch, _ = backbone_features(spec.build(pretrained=False), xyz, 4, torch.device("cpu"))
    assert not torch.allclose(scratch, pretrained, atol=1e-3)


def _batch_norms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_estimated_batchnorm_statistics_are_the_mean_of_each_batchs_statistics(shards: Path, checkpoint):
    backbone = backbone_from_checkpoint(checkpoint[0]).build(pretrained=True)
    clouds = resample(load_samples(shards / "demo_indoor", task_kind("indoor_segmentation")), 256,
                      np.random.default_rng(0))  # fmt: skip
    xyz, batch_size = clouds.xyz[:10], 4  # batches of 4, 4 and 2 clouds
    norms = _batch_norms(backbone)
    weights = {k: v.clone() for k, v in backbone.state_dict().items() if "running" not in k and "batches" not in k}
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(norms))}

    def record(i: int):
        def hook(module, inputs, output):  # the batch statistics this layer normalises with, in float64
            x = inputs[0].double().transpose(0, 1).reshape(module.num_features, -1)
            seen[i].append((x.mean(dim=1), x.var(dim=1, unbiased=True)))

        return hook

    reference = backbone_from_checkpoint(checkpoint[0]).build(pretrained=True).train()
    handles = [norm.register_forward_hook(record(i)) for i, norm in enumerate(_batch_norms(reference))]
    with torch.no_grad():
        for start in range(0, len(xyz), batch_size):
            reference(torch.from_numpy(xyz[start : start + batch_size]))
    for handle in handles:
        handle.remove()

    estimate_bn_statistics(backbone, xyz, batch_size, torch.device("cpu"))
    assert not backbone.training
    for i, norm in enumerate(norms):
        means, variances = zip(*seen[i], strict=True)
        torch.testing.assert_close(norm.running_mean.double(), torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(norm.running_var.double(), torch.stack(variances).mean(0), rtol=1e-4, atol=1e-5)
        assert norm.momentum == 0.1  # restored
    for key, value in backbone.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key


def indoor_probe_data(shards: Path) -> tuple[Split, Clouds, Clouds, int]:
    """The indoor task's split, 256-point training and test clouds, and its class count."""
    kind = task_kind("indoor_segmentation")
    split = split_by_group(load_samples(shards / "demo_indoor", kind), INDOOR_TEST_ROOMS, "room", source="test")
    train = resample(split.train, 256, np.random.default_rng(0))
    return split, train, resample(split.test, 256, np.random.default_rng(1)), len(kind.classes)


def test_the_linear_probe_reads_neither_the_loaded_nor_the_initial_batchnorm_statistics(shards: Path, checkpoint):
    """Both inits are normalised by the training clouds' statistics: a backbone's loaded statistics (a checkpoint's
    from augmented pretraining views, a random init's 0 / 1) do not change the probe; "loaded" keeps them."""
    _, train, test, classes = indoor_probe_data(shards)
    settings = TrainSettings(epochs=2, lr=0.01, batch_size=8, momentum=0.9, weight_decay=0.0)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    backbone = backbone_from_checkpoint(checkpoint[0]).build(pretrained=False)
    skewed = backbone_from_checkpoint(checkpoint[0]).build(pretrained=False)
    skewed.load_state_dict(backbone.state_dict())
    for norm in _batch_norms(skewed):  # statistics of some other data
        norm.running_mean.add_(3.0)
        norm.running_var.mul_(50.0)
    before = {k: v.clone() for k, v in skewed.state_dict().items()}

    probe = linear_probe(backbone, train, test, classes, settings, seed=0, device=cpu)
    assert np.array_equal(linear_probe(skewed, train, test, classes, settings, seed=0, device=cpu), probe)
    assert all(torch.equal(v, before[k]) for k, v in skewed.state_dict().items())  # the caller's copy is untouched
    as_loaded = linear_probe(backbone, train, test, classes, settings, seed=0, device=cpu, bn_statistics="loaded")
    skewed_as_loaded = linear_probe(skewed, train, test, classes, settings, 0, cpu, bn_statistics="loaded")
    assert not np.array_equal(as_loaded, skewed_as_loaded)
    with pytest.raises(ValueError, match="bn_statistics must be one of"):
        linear_probe(backbone, train, test, classes, settings, 0, cpu, bn_statistics="batch")


def test_fp2_scores_reach_every_input_point_and_keep_their_own_at_the_fp2_points():
    generator = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 64, 4, generator=generator)  # xyz + one feature column
    inds = torch.stack([torch.randperm(64, generator=generator)[:16] for _ in range(2)])
    scores = torch.randn(2, 5, 16, generator=generator)
    spread = scores_at_inputs(scores, inds, xyz)
    assert spread.shape == (2, 5, 64)
    for b in range(2):
        torch.testing.assert_close(spread[b][:, inds[b]], scores[b], atol=1e-5, rtol=1e-5)  # distance 0 dominates
    everywhere = torch.arange(64).expand(2, 64)
    assert scores_at_inputs(spread, everywhere, xyz) is spread  # PointNet-MSG: fp2 is every input point


def test_both_protocols_score_every_labelled_test_point_not_only_the_fp2_points(shards: Path, checkpoint):
    split, train, test, classes = indoor_probe_data(shards)
    settings = TrainSettings(epochs=1, lr=0.01, batch_size=8, momentum=0.9, weight_decay=0.0)
    cpu = torch.device("cpu")
    labelled = int((test.labels != IGNORE_LABEL).sum())
    assert labelled > len(test.xyz) * TINY_BACKBONE["npoints"][1]  # more than the fp2 points could hold
    backbone = backbone_from_checkpoint(checkpoint[0]).build(pretrained=True)
    assert linear_probe(backbone, train, test, classes, settings, seed=0, device=cpu).sum() == labelled
    confusion, _ = finetune(backbone, split.train, test, 256, classes, settings, seed=0, device=cpu)
    assert confusion.sum() == labelled


def test_metrics_json_holds_seeds_mean_std_difference_and_noise_flag(shards: Path, checkpoint, tmp_path: Path):
    path, _ = checkpoint
    task = {"dataset": "demo_lidar", "kind": "lidar_segmentation", "test_groups": LIDAR_TEST_TILES, "xyz_scale": 0.05}
    returned = run_evaluation("lidar_seg", task, TINY_SETTINGS, shards / "demo_lidar", path, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["split"]["test_groups"] == sorted(LIDAR_TEST_TILES)
    assert not set(written["split"]["train_samples"]) & set(written["split"]["test_samples"])
    assert written["classes"] == list(LIDAR_CLASSES)
    for protocol in ("linear", "finetune"):
        result = written["results"][protocol]
        for init in ("pretrained", "scratch"):
            assert set(result[init]["per_seed"]) == {"0", "1"}
            for metric in ("miou", "accuracy"):
                values = [run[metric] for run in result[init]["per_seed"].values()]
                assert all(0.0 <= v <= 1.0 for v in values)
                assert result[init][metric]["mean"] == pytest.approx(np.mean(values))
                assert result[init][metric]["std"] == pytest.approx(np.std(values, ddof=1))
        for metric in ("miou", "accuracy"):
            diff = result["pretrained_minus_scratch"][metric]
            expected = result["pretrained"][metric]["mean"] - result["scratch"][metric]["mean"]
            assert diff["difference"] == pytest.approx(expected)
            assert diff["within_noise"] == (abs(expected) <= diff["noise"])
    assert (tmp_path / "out" / "finetuned.pth").is_file()


def test_a_train_dataset_trains_and_the_datasets_test_groups_test(shards: Path, checkpoint, tmp_path: Path):
    raw = shards.parent / "raw" / "demo_lidar"
    folder = tmp_path / "train_tiles"
    folder.mkdir()
    for path in sorted(raw.rglob("*.la[sz]")):
        if lidar_tile(path.stem) not in LIDAR_TEST_TILES:
            shutil.copy(path, folder / path.name)
    config = tmp_path / "config.yaml"
    source = {"source": {"kind": "local", "path": str(folder)}, "preprocess": {"max_points": 4000, "min_points": 500}}
    config.write_text(yaml.safe_dump({"datasets": {"train_tiles": source}}))
    for stage in ("download", "preprocess"):
        done = run_cli(stage, "--config", str(config), "--dataset", "train_tiles", "--results", str(tmp_path / "r"))
        assert done.returncode == 0, done.stderr
    task = {"dataset": "demo_lidar", "train_dataset": "train_tiles", "kind": "lidar_segmentation",
            "test_groups": LIDAR_TEST_TILES, "xyz_scale": 0.05}  # fmt: skip
    settings = {**TINY_SETTINGS, "seeds": [0], "protocols": ["linear"]}
    train_shards = tmp_path / "r" / "shards" / "train_tiles"
    path = checkpoint[0]
    returned = run_evaluation("lidar_seg", task, settings, shards / "demo_lidar", path, tmp_path / "out", train_shards)
    assert returned["train_dataset"] == "train_tiles"
    assert all(sample.startswith("train_tiles/") for sample in returned["split"]["train_samples"])
    assert {lidar_tile(sample) for sample in returned["split"]["test_samples"]} == set(LIDAR_TEST_TILES)
    with pytest.raises(DataError, match="overlap"):  # the dataset itself: its test tiles would train too
        run_evaluation("lidar_seg", task, settings, shards / "demo_lidar", path, tmp_path / "o", shards / "demo_lidar")


def test_checkpoint_without_a_point_encoder_is_a_clear_error(checkpoint, tmp_path: Path):
    _, model = checkpoint
    renamed = {
        key.replace("query_encoders.point.", "query_encoders.voxel."): v for key, v in model.state_dict().items()
    }
    path = _save(tmp_path / "voxel_only.pth", renamed, _tiny_run())
    with pytest.raises(CheckpointError, match=r"voxel_only.pth: no point query encoder"):
        backbone_from_checkpoint(path)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_a_clear_error(checkpoint, tmp_path: Path):
    _, model = checkpoint
    run = _tiny_run()
    run["backbone"] = {**run["backbone"], "scale": 2}
    path = _save(tmp_path / "mismatch.pth", model.state_dict(), run)
    with pytest.raises(CheckpointError, match=r"mismatch.pth: the point query encoder does not fit.*of another shape"):
        backbone_from_checkpoint(path)
