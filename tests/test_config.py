"""The config is validated against the schema: defaults filled, mistakes reported in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from depthcontrast.architectures import evaluated_tasks
from depthcontrast.config import load_config, validate_config
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
        ({"formats": ["voxel"], "voxel_backbone": {}}, ["openpcdet"]),
        ({"formats": ["point", "voxel"], "voxel_backbone": {}}, ["votenet", "plain", "openpcdet"]),
        ({"formats": ["voxel"], "voxel_backbone": {"name": "minkunet"}}, ["minkunet_seg"]),
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
        ({"formats": ["voxel"]}, "pretrain.r: formats lists voxel, but the run has no voxel_backbone block"),
    ],
)
def test_export_targets_the_run_cannot_make_are_a_config_error(run, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate_config(builtin_run(**run), source="cfg.yaml")


def test_voxel_only_runs_get_no_builtin_evaluation():
    config = validate_config(
        {
            **builtin_run(formats=["voxel"], voxel_backbone={}),
            "evaluate": {"tasks": {"seg": {"dataset": "scans", "kind": "lidar_segmentation", "test_groups": ["t"]}}},
        }
    )
    config["pretrain"]["p"] = {**config["pretrain"]["r"], "formats": ["point", "voxel"]}
    assert evaluated_tasks(config) == {"p": ["seg"], "r": []}
