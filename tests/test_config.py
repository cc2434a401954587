"""The config is validated against the schema: defaults filled, mistakes reported in one line."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from depthcontrast.architectures import evaluated_tasks
from depthcontrast.config import WORKFLOW_OVERRIDES, ConfigLayer, load_config, validate_config, validate_layered_config
from depthcontrast.errors import ConfigError
from tests.conftest import REPO, run_cli, run_snakemake


def one_dataset(**entry) -> dict:
    return {"datasets": {"scans": entry}}


def test_repository_config_is_valid_and_gets_defaults():
    config = load_config(REPO / "config.yaml")
    lidar = config["datasets"]["demo_lidar"]
    assert lidar["format"]["name"] == "auto"
    assert lidar["preprocess"]["compression"] in ("none", "lz4", "zstd", "gzip")
    assert lidar["enabled"] is True


def test_defaults_are_filled_inside_kind_specific_source_options():
    config = validate_config(
        one_dataset(source={"kind": "http", "urls": [{"url": "http://x/a.ply", "sha256": "0" * 64}]})
    )
    source = config["datasets"]["scans"]["source"]
    assert (source["retries"], source["backoff_s"], source["timeout_s"]) == (5, 1.0, 60)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            one_dataset(source={"kind": "htp"}),
            "datasets.scans.source.kind: 'htp' is not allowed (allowed: 'builtin'",
        ),
        (one_dataset(sorce={"kind": "builtin"}), "datasets.scans: unknown key 'sorce'"),
        (
            one_dataset(source={"kind": "builtin", "subset": "indoor", "subst": "x"}),
            "datasets.scans.source: unknown key 'subst'",
        ),
        (one_dataset(source={"kind": "http"}), "datasets.scans.source: 'urls' is a required property"),
        (one_dataset(source={"kind": "local"}), "datasets.scans.source: 'path' is a required property"),
        (
            one_dataset(source={"kind": "builtin", "subset": "indoor"}, preprocess={"min_points": "many"}),
            "datasets.scans.preprocess.min_points: 'many' is not of type 'integer'",
        ),
        (
            one_dataset(source={"kind": "builtin", "subset": "indoor"}, preprocess={"min_points": 0}),
            "datasets.scans.preprocess.min_points: 0 is less than the minimum of 1",
        ),
        (
            one_dataset(source={"kind": "http", "urls": [{"url": "http://x", "sha256": "abc"}]}),
            "datasets.scans.source.urls.0.sha256: 'abc' does not match",
        ),
        (
            one_dataset(source={"kind": "builtin", "subset": "indoor"}, format={"name": "xyz"}),
            "datasets.scans.format.name: 'xyz'",
        ),
        ({"datasetz": {}}, "<top level>: unknown key 'datasetz'"),
        ({"datasets": {}}, "datasets: {} should be non-empty"),
        (
            {"datasets": {"bad name": {"source": {"kind": "builtin", "subset": "lidar"}}}},
            "'bad name' does not match",
        ),
    ],
)
def test_schema_errors_name_the_key_and_what_is_allowed(config, expected):
    with pytest.raises(ConfigError) as caught:
        validate_config(config, source="cfg.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cfg.yaml: ")
    assert expected in message


def test_unreadable_yaml_is_one_clear_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)


def test_cli_reports_a_config_mistake_in_one_line_without_traceback(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(one_dataset(source={"kind": "builtin", "subset": "outdoor"})))
    result = run_cli("validate-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"depthcontrast: error: {path}: datasets.scans.source.subset: 'outdoor' is not allowed "
        "(allowed: 'indoor', 'lidar')"
    ]


def test_snakemake_stops_at_once_on_a_config_mistake(repo_copy: Path):
    config = yaml.safe_load((repo_copy / "config.yaml").read_text())
    config["datasets"]["demo_lidar"]["preprocess"]["samples_per_shard"] = -3
    (repo_copy / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(repo_copy, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "datasets.demo_lidar.preprocess.samples_per_shard: -3 is less than the minimum of 1" in result.stderr
    assert "Traceback" not in result.stderr


def builtin_run(**run) -> dict:
    """One builtin LiDAR dataset and a pretraining run `r` on it with the given settings."""
    dataset = one_dataset(source={"kind": "builtin", "subset": "lidar"})
    return {**dataset, "pretrain": {"r": {"datasets": ["scans"], **run}}}


@pytest.mark.parametrize(
    ("run", "targets"),
    [
        ({}, ["votenet", "plain"]),
        ({"backbone": {"name": "pointnet2_msg"}}, ["openpcdet", "plain"]),
        ({"representations": ["voxel"], "voxel_backbone": {}}, ["openpcdet"]),
        ({"representations": ["point", "voxel"], "voxel_backbone": {}}, ["votenet", "plain", "openpcdet"]),
        ({"representations": ["voxel"], "voxel_backbone": {"name": "minkunet"}}, ["minkunet_seg"]),
    ],
)
def test_a_run_without_export_targets_exports_what_its_encoders_make(run, targets):
    assert validate_config(builtin_run(**run))["pretrain"]["r"]["export_targets"] == targets


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (
            {"backbone": {"name": "pointnet2_msg"}, "export_targets": ["votenet"]},
            "pretrain.r.export_targets: 'votenet' needs a PointNet++ point encoder (backbone.name: pointnet2_ssg), "
            "but the run trains a PointNet-MSG point encoder",
        ),
        (
            {"export_targets": ["minkunet_seg"]},
            "'minkunet_seg' needs a MinkUNet voxel encoder (voxel_backbone.name: minkunet), but the run trains a "
            "PointNet++ point encoder",
        ),
        (
            {"representations": ["voxel"]},
            "pretrain.r: representations lists voxel, but the run has no voxel_backbone block",
        ),
    ],
)
def test_export_targets_the_run_cannot_make_are_a_config_error(run, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate_config(builtin_run(**run), source="cfg.yaml")


def test_voxel_only_runs_get_no_builtin_evaluation():
    config = validate_config(
        {
            **builtin_run(representations=["voxel"], voxel_backbone={}),
            "evaluate": {"tasks": {"seg": {"dataset": "scans", "kind": "lidar_segmentation", "test_groups": ["t"]}}},
        }
    )
    config["pretrain"]["p"] = {**config["pretrain"]["r"], "representations": ["point", "voxel"]}
    assert evaluated_tasks(config) == {"p": ["seg"], "r": []}


# ------------------------------------------------------------------- numbers PyYAML reads as text
def config_text(key: str, value_text: str) -> str:
    """A config file's text: one builtin dataset, a run `r` and `key` (dotted) set to the raw YAML `value_text`."""
    config = {**builtin_run(), "evaluate": {}}
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = "VALUE_HERE"
    return yaml.safe_dump(config).replace("VALUE_HERE", value_text)


def read_back(path: Path, key: str):
    value = load_config(path)
    for part in key.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize(
    ("key", "text", "spelling"),
    [
        ("pretrain.r.optimizer.lr", "1e-3", "1.0e-3"),
        ("pretrain.r.loss.temperature", "5E-2", "5.0e-2"),
        ("datasets.scans.preprocess.xyz_quantum_m", "1e-3", "1.0e-3"),
        ("datasets.scans.preprocess.max_points", "5e4", "50000"),
        ("evaluate.linear.lr", "1.0e2", "1.0e+2"),
        ("evaluate.points", "4e3", "4000"),
    ],
)
def test_a_number_yaml_reads_as_text_names_the_key_and_a_spelling_that_works(
    tmp_path: Path, key: str, text: str, spelling: str
):
    path = tmp_path / "cfg.yaml"
    path.write_text(config_text(key, text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: '{text}' is not of type")
    assert message.endswith(f"(YAML reads {text} as text: write {spelling})")
    path.write_text(config_text(key, spelling))  # the advice, followed, gives the number meant
    assert read_back(path, key) == float(text)


def test_a_quoted_number_is_told_to_lose_its_quotes_and_other_text_gets_no_number_hint(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text(config_text("pretrain.r.optimizer.lr", '"0.01"'))
    with pytest.raises(ConfigError, match=re.escape("'0.01' is not of type 'number' (in quotes, so text: write 0.01 ")):
        load_config(path)
    path.write_text(config_text("pretrain.r.optimizer.lr", "fast"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).endswith("pretrain.r.optimizer.lr: 'fast' is not of type 'number'")


# ------------------------------------------------------------------- augmentation parameters
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"random_cuboid": {"n_points": 5}},
            "augmentation_overrides.random_cuboid: unknown key 'n_points' (allowed: aspect, crop, max_tries, npoints, "
            "randcrop)",
        ),
        (
            {"resample_lidar": {"far_range": "1.0e9"}},
            "augmentation_overrides.resample_lidar.far_range: '1.0e9' is not of type 'number' (YAML reads 1.0e9 as "
            "text: write 1.0e+9)",
        ),
        ({"resample": {"npoints": 2.5}}, "augmentation_overrides.resample.npoints: 2.5 is not of type 'integer'"),
        ({"random_flip": {"flip_x": "no"}}, "augmentation_overrides.random_flip.flip_x: 'no' is not of type 'boolean'"),
        ({"multiscale": {"sizes": 1024}}, "augmentation_overrides.multiscale.sizes: 1024 is not of type 'array'"),
        ({"random_crop": {}}, "augmentation_overrides: unknown key 'random_crop' (allowed: multiscale, random_cuboid,"),
    ],
)
def test_a_bad_augmentation_parameter_is_one_line_naming_its_key(overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(f"cfg.yaml: pretrain.r.{expected}")):
        validate_config(builtin_run(augmentation_overrides=overrides), source="cfg.yaml")


def test_an_augmentation_block_gets_the_schema_defaults_of_the_parameters_it_leaves_out():
    run = validate_config(builtin_run(augmentation_overrides={"random_cuboid": {"npoints": 500}}))["pretrain"]["r"]
    cuboid = run["augmentation_overrides"]["random_cuboid"]
    assert cuboid == {"npoints": 500, "crop": 0.5, "randcrop": 1.0, "aspect": 0.75, "max_tries": 100}
    assert set(run["augmentation_overrides"]) == {"random_cuboid"}  # blocks not written stay out


# ------------------------------------------------------------------- cross-key checks
@pytest.mark.parametrize(
    ("preprocess", "expected"),
    [
        ({"max_points": 300, "min_points": 500}, "max_points (300) is below min_points (500)"),
        ({"max_points": 800}, "max_points (800) is below min_points (1000)"),  # the schema's default min_points
        ({"max_points": 500, "min_points": 500}, None),
        ({"max_points": None, "min_points": 500}, None),  # null keeps every point
    ],
)
def test_max_points_below_min_points_is_one_line_naming_the_datasets_preprocess(preprocess, expected):
    config = one_dataset(source={"kind": "builtin", "subset": "indoor"}, preprocess=preprocess)
    if expected is None:
        assert validate_config(config)["datasets"]["scans"]["preprocess"]["min_points"] == preprocess.get("min_points")
        return
    with pytest.raises(ConfigError) as caught:
        validate_config(config, source="cfg.yaml")
    message = str(caught.value)
    assert message.startswith(f"cfg.yaml: datasets.scans.preprocess: {expected}: ") and "\n" not in message


# ------------------------------------------------------------------- which file a key came from
def merged(layers: list[ConfigLayer]) -> dict:
    """The layers merged the way Snakemake merges config files and --config (nested mappings key by key)."""
    config: dict = {}
    for layer in layers:
        update_config(config, copy.deepcopy(dict(layer.values)))
    return config


BASE = ConfigLayer("config.yaml", builtin_run())
GRID = {"backbone.x": [1]}  # the sweep's one run, s-x1, has an unknown backbone key


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (  # set in both files: the later one wins, and is named
            [ConfigLayer("config.yaml", builtin_run(optimizer={"lr": "1e-3"})),
             ConfigLayer("b.yaml", {"pretrain": {"r": {"optimizer": {"lr": "2e-3"}}}})],
            "b.yaml: pretrain.r.optimizer.lr: '2e-3' is not of type 'number'",
        ),
        (  # set only in the first file, though the second sets keys next to it
            [ConfigLayer("config.yaml", builtin_run(optimizer={"lr": "1e-3"})),
             ConfigLayer("b.yaml", {"pretrain": {"r": {"optimizer": {"momentum": 0.8}}}})],
            "config.yaml: pretrain.r.optimizer.lr: '1e-3' is not of type 'number'",
        ),
        (  # an unknown key is blamed on the layer that adds it, not on the one that holds its parent
            [BASE, ConfigLayer(WORKFLOW_OVERRIDES, {"pretrain": {"r": {"optimizer": {"rate": 1}}}})],
            "--config overrides: pretrain.r.optimizer: unknown key 'rate'",
        ),
        (  # a cross-key check: the layer that sets the mapping
            [BASE, ConfigLayer("b.yaml", {"datasets": {"scans": {"preprocess": {"max_points": 800}}}})],
            "b.yaml: datasets.scans.preprocess: max_points (800) is below min_points (1000)",
        ),
        (  # Snakemake's --config reads values inside {...} as text: the hint says so, not YAML's 1e-3 rule
            [BASE, ConfigLayer(WORKFLOW_OVERRIDES, {"evaluate": {"seeds": ["1"]}})],
            "--config overrides: evaluate.seeds.0: '1' is not of type 'integer' (--config reads values inside {...} "
            "as text: set evaluate.seeds in a --configfile)",
        ),
        (  # a sweep's run is in no layer: every layer is named
            [BASE, ConfigLayer("b.yaml", {"sweeps": {"s": {"base": {"datasets": ["scans"]}, "grid": GRID}}})],
            "config.yaml + b.yaml: pretrain.s-x1.backbone: unknown key 'x'",
        ),
    ],
)  # fmt: skip
def test_a_config_error_names_the_layer_that_sets_the_key(layers: list[ConfigLayer], expected: str):
    with pytest.raises(ConfigError) as caught:
        validate_layered_config(merged(layers), layers)
    assert str(caught.value).startswith(expected)


def test_snakemake_names_the_configfile_or_the_overrides_that_set_the_wrong_key(repo_copy: Path):
    (repo_copy / "extra").mkdir()
    (repo_copy / "extra/bad.yaml").write_text("pretrain:\n  demo_pointnet:\n    optimizer: {lr: 1e-3}\n")
    (repo_copy / "extra/fine.yaml").write_text("pretrain:\n  demo_pointnet:\n    epochs: 3\n")

    def error_line(*args: str) -> str:
        result = run_snakemake(repo_copy, "-n", "--cores", "1", *args, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        return result.stderr.strip().splitlines()[-1]

    assert error_line("--configfile", "extra/fine.yaml", "extra/bad.yaml") == (
        "depthcontrast: error: extra/bad.yaml: pretrain.demo_pointnet.optimizer.lr: '1e-3' is not of type 'number' "
        "(YAML reads 1e-3 as text: write 1.0e-3)"
    )
    assert error_line("--configfile", "extra/fine.yaml", "--config", "evaluate={points: 4}").startswith(
        "depthcontrast: error: --config overrides: evaluate.points: '4' is not of type 'integer' (--config reads"
    )
    config = yaml.safe_load((repo_copy / "config.yaml").read_text())
    config["datasets"]["demo_lidar"]["preprocess"]["max_points"] = 100
    (repo_copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert error_line("--configfile", "extra/fine.yaml").startswith(
        "depthcontrast: error: config.yaml: datasets.demo_lidar.preprocess: max_points (100) is below min_points (500)"
    )
