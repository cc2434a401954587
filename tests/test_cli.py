"""The verbs as the workflow's rules call them: settings files written from the config and read back, and --log,
which takes everything a verb writes (the rules' one way into every stage)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from depthcontrast.architectures import evaluated_tasks
from depthcontrast.config import load_config
from depthcontrast.errors import ConfigError
from depthcontrast.stages.pretrain import training_settings
from depthcontrast.stages.settings import STAGE_SETTINGS, read_settings, stage_settings, write_settings
from tests.conftest import REPO, run_cli

CONFIG = REPO / "config.yaml"
JOB = {"enabled": True, "run": "demo_pointnet", "target": "votenet"}


def with_external_job(tmp_path: Path, command: str) -> Path:
    """The repository's config plus the external job `check` running `command` in tmp_path."""
    config = yaml.safe_load(CONFIG.read_text())
    config["external"] = {"check": {**JOB, "workdir": str(tmp_path), "command": command}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def settings_file(tmp_path: Path, config: dict, stage: str, name: str) -> Path:
    path = tmp_path / "settings" / stage / f"{name}.yaml"
    write_settings(stage_settings(config, stage, name), path, stage, name)
    return path


@pytest.mark.parametrize(
    ("stage", "name", "key"),
    [("download", "demo_lidar", ("datasets", "demo_lidar", "source")),
     ("preprocess", "demo_lidar", ("datasets", "demo_lidar", "preprocess")),
     ("preprocess", "demo_lidar", ("datasets", "demo_lidar", "format")),
     ("evaluate", "demo_pointnet/indoor_seg", ("evaluate", "tasks", "indoor_seg")),
     ("evaluate", "demo_pointnet/indoor_seg", ("evaluate", "seeds"))],
)  # fmt: skip
def test_a_settings_file_gives_the_verb_the_block_that_the_config_gives_it(tmp_path: Path, stage, name, key):
    config = load_config(CONFIG)
    settings = read_settings(settings_file(tmp_path, config, stage, name))
    for part in key:
        config, settings = config[part], settings[part]
    assert settings == config


def test_a_run_trains_the_same_settings_from_its_settings_file_as_from_the_config(tmp_path: Path):
    config = load_config(CONFIG)
    written = read_settings(settings_file(tmp_path, config, "pretrain", "demo_pointnet"))["pretrain"]["demo_pointnet"]
    run = config["pretrain"]["demo_pointnet"]
    assert training_settings(written) == training_settings(run)
    assert {key: written["resources"][key] for key in ("nodes", "tasks_per_node")} == {"nodes": 1, "tasks_per_node": 1}


def test_a_runs_evaluation_overrides_reach_its_evaluations_only(tmp_path: Path):
    config = load_config(CONFIG)
    demo = stage_settings(config, "evaluate", "demo_pointnet/indoor_seg")
    pretrain = stage_settings(config, "pretrain", "demo_pointnet")
    config["pretrain"]["demo_pointnet"]["evaluation"] = {"seeds": [0, 1, 2, 3, 4], "finetune": {"epochs": 20}}
    overridden = stage_settings(config, "evaluate", "demo_pointnet/indoor_seg")["evaluate"]
    assert overridden["seeds"] == [0, 1, 2, 3, 4]
    assert overridden["finetune"] == {**demo["evaluate"]["finetune"], "epochs": 20}  # the rest stays evaluate's
    assert {k: v for k, v in overridden.items() if k not in ("seeds", "finetune")} == {
        k: v for k, v in demo["evaluate"].items() if k not in ("seeds", "finetune")
    }
    assert stage_settings(config, "pretrain", "demo_pointnet") == pretrain  # no pretraining rerun
    assert stage_settings(config, "evaluate", "lidar_msg/indoor_seg") == {
        "evaluate": {**demo["evaluate"], "tasks": {"indoor_seg": config["evaluate"]["tasks"]["indoor_seg"]}}
    }  # another run keeps evaluate's


def test_an_unknown_evaluation_override_is_a_config_error(tmp_path: Path):
    config = yaml.safe_load(CONFIG.read_text())
    config["pretrain"]["demo_pointnet"]["evaluation"] = {"finetune": {"epoch": 20}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="epoch"):
        load_config(path)


def test_a_run_is_scored_on_its_evaluation_tasks_only_and_they_must_exist(tmp_path: Path):
    config = load_config(CONFIG)
    config["pretrain"]["gpu_pointnet"]["enabled"] = True
    tasks = evaluated_tasks(config)
    assert tasks["demo_pointnet"] == ["indoor_seg", "lidar_seg"]  # config.yaml keeps the demo off the GPU-only task
    assert tasks["gpu_pointnet"] == ["indoor_seg", "indoor_seg_rooms", "lidar_seg", "lidar_seg_crops"]
    raw = yaml.safe_load(CONFIG.read_text())
    raw["pretrain"]["demo_pointnet"]["evaluation"] = {"tasks": ["indoor_seg", "kicad_cls"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"pretrain.demo_pointnet.evaluation.tasks.*'kicad_cls' is not an evaluation"):
        load_config(path)


def test_settings_hold_only_what_changes_a_jobs_result(tmp_path: Path):
    config = load_config(CONFIG)
    jobs = (("download", "demo_indoor"), ("preprocess", "demo_indoor"), ("pretrain", "demo_pointnet"))
    before = {stage: stage_settings(config, stage, name) for stage, name in jobs}
    run = config["pretrain"]["demo_pointnet"]
    run.update(enabled=False, export_targets=["plain"])
    run["resources"].update(cpus_per_task=16, mem_mb=64000, runtime=60, gpu=True)
    config["datasets"]["demo_indoor"]["enabled"] = False
    assert {stage: stage_settings(config, stage, name) for stage, name in jobs} == before
    config["datasets"]["demo_indoor"]["preprocess"]["min_points"] += 1
    assert stage_settings(config, "download", "demo_indoor") == before["download"]
    assert stage_settings(config, "preprocess", "demo_indoor") != before["preprocess"]
    run["resources"]["tasks_per_node"] = 2
    assert stage_settings(config, "pretrain", "demo_pointnet") != before["pretrain"]


def reversed_keys(value):
    """`value` with the keys of every mapping in it in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return [reversed_keys(item) for item in value] if isinstance(value, list) else value


def test_settings_do_not_depend_on_the_order_of_keys_in_the_config(tmp_path: Path):
    config = load_config(with_external_job(tmp_path, "true"))
    names = {"download": "demo_indoor", "preprocess": "demo_indoor", "pretrain": "demo_pointnet",
             "evaluate": "demo_pointnet/indoor_seg", "external": "check"}  # fmt: skip
    assert set(names) == set(STAGE_SETTINGS)
    for stage, name in names.items():  # Snakemake compares a rule's params by their repr
        assert repr(stage_settings(reversed_keys(config), stage, name)) == repr(stage_settings(config, stage, name))


def test_an_edited_settings_file_is_checked_against_the_schema_in_one_line(tmp_path: Path):
    path = tmp_path / "download.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"mine": {"source": {"kind": "ftp"}}}}))
    with pytest.raises(ConfigError, match=rf"^{path}: datasets.mine.source.kind: 'ftp' is not allowed \(allowed: "):
        read_settings(path)
    path.write_text("pretrain: [1, 2]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: pretrain: \[1, 2\] is not of type 'object'$"):
        read_settings(path)


def test_a_pretrain_job_given_a_broken_settings_file_fails_in_one_line_of_its_log(tmp_path: Path):
    broken = tmp_path / "settings.yaml"
    broken.write_text("pretrain:\n  demo_pointnet:\n    datasets: [demo_indoor]\n    optimizer: {lr: fast}\n")
    log = tmp_path / "pretrain.log"
    failed = run_cli("--log", str(log), "pretrain", "demo_pointnet", "--settings", str(broken))
    assert failed.returncode == 2 and failed.stdout == failed.stderr == ""
    assert log.read_text().splitlines() == [
        f"depthcontrast: error: {broken}: pretrain.demo_pointnet.optimizer.lr: 'fast' is not of type 'number'"
    ]


def test_with_log_the_output_and_the_one_line_error_go_to_the_log_file(tmp_path: Path):
    log = tmp_path / "logs" / "download.log"
    results = tmp_path / "results"
    done = run_cli("--log", str(log), "download", "--config", str(CONFIG), "--dataset", "demo_indoor",
                   "--results", str(results))  # fmt: skip
    assert done.returncode == 0 and done.stdout == done.stderr == ""
    assert "INFO depthcontrast.stages.download: download demo_indoor: source kind builtin" in log.read_text()
    failed = run_cli("--log", str(log), "download", "--config", str(CONFIG), "--dataset", "mine")
    assert failed.returncode == 2 and failed.stdout == failed.stderr == ""
    names = ", ".join(sorted(yaml.safe_load(CONFIG.read_text())["datasets"]))
    expected = f"depthcontrast: error: {CONFIG}: no datasets.mine (datasets has: {names})"
    assert log.read_text().splitlines()[-1] == expected


def test_the_external_verb_runs_a_job_and_its_commands_output_goes_to_the_log(tmp_path: Path):
    config = with_external_job(tmp_path, f"{sys.executable} -c \"print('job saw', open('{{weights}}').read())\"")
    weights = tmp_path / "votenet.pth"
    weights.write_text("weights")
    log = tmp_path / "external.log"
    settings = settings_file(tmp_path, load_config(config), "external", "check")
    done = run_cli("--log", str(log), "external", "--job", "check", "--settings", str(settings), "--weights",
                   str(weights), "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 0, log.read_text()
    assert "job saw weights" in log.read_text()
    assert json.loads((tmp_path / "out" / "done.json").read_text())["exit_status"] == 0


def test_evaluate_names_a_task_the_config_lacks_in_one_line(tmp_path: Path):
    failed = run_cli("evaluate", "--config", str(CONFIG), "--task", "det", "--checkpoint", "last.pth", "--out", "x")
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        f"depthcontrast: error: {CONFIG}: no evaluate.tasks.det (evaluate.tasks has: "
        f"{', '.join(sorted(yaml.safe_load(CONFIG.read_text())['evaluate']['tasks']))})"
    ]
