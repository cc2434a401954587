"""The real Snakemake DAG on the built-in data, in a temporary copy of the repository."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.io_utils import sha256_file
from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow
DATASETS = ("demo_indoor", "demo_lidar")
DEMO_EPOCHS = 2
# a stand-in for a downstream code base's training command: loads the weights as the VoteNet fork does
EXTERNAL_COMMAND = (
    f"{sys.executable} -c \"import sys, torch; model = torch.load(sys.argv[1], weights_only=True)['model'];"
    " assert all(k.startswith('module.trunk.0.') for k in model);"
    " open(sys.argv[2] + '/loaded.txt', 'w').write(str(len(model)))\" {weights} {out}"
)


@contextlib.contextmanager
def edited_config(repo: Path) -> Iterator[dict]:
    """The repo's config to edit (then `write_config`); the original file is put back afterwards."""
    path = repo / "config.yaml"
    original = path.read_text()
    try:
        yield yaml.safe_load(original)
    finally:
        path.write_text(original)


def write_config(repo: Path, config: dict) -> None:
    (repo / "config.yaml").write_text(yaml.safe_dump(config))


def planned_jobs(repo: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that `snakemake -n` would run."""
    result = run_snakemake(repo, "-n", "--cores", "2", *args)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(count) for rule, count in counts.items()}


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("dag") / "repo")
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["pretrain"]["demo_pointnet"]["epochs"] = DEMO_EPOCHS  # the full demo is README command (a)
    config["evaluate"].update(seeds=[0, 1], linear={"epochs": 2}, finetune={"epochs": 1})
    config["external"] = {"votenet_check": {"enabled": True, "run": "demo_pointnet", "target": "votenet",
                                            "workdir": str(repo), "command": EXTERNAL_COMMAND}}  # fmt: skip
    (repo / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(repo, "--cores", "2")
    return repo


def test_the_dag_builds_shards_for_every_builtin_dataset(built_repo: Path):
    for name in DATASETS:
        manifest = json.loads((built_repo / "results/raw" / name / "MANIFEST.json").read_text())
        assert manifest["num_files"] > 0
        index = json.loads((built_repo / "results/shards" / name / "index.json").read_text())
        assert index["totals"]["samples"] > 0 if "totals" in index else index
        dataset = ShardDataset(built_repo / "results/shards" / name)
        assert len(dataset) > 0
        assert dataset.has_labels
        sample = dataset[len(dataset) - 1]
        assert sample["points"].shape[1] == 3
        for rule in ("download", "preprocess"):
            assert (built_repo / f"results/logs/{rule}/{name}.log").exists()
            assert (built_repo / f"results/benchmarks/{rule}/{name}.tsv").exists()
    assert ShardDataset(built_repo / "results/shards/demo_lidar").feature_names == ["intensity"]


def test_the_dag_pretrains_the_demo_run_on_both_datasets(built_repo: Path):
    run = built_repo / "results/pretrain/demo_pointnet"
    state = load_checkpoint(run / "last.pth")
    assert state["epoch"] == DEMO_EPOCHS
    assert yaml.safe_load((run / "config.yaml").read_text())["datasets"] == list(DATASETS)
    with open(run / "metrics.csv", newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert (built_repo / "results/logs/pretrain/demo_pointnet.log").read_text().count("checkpoint") >= DEMO_EPOCHS


def test_the_dag_exports_the_run_for_votenet_and_as_plain_weights(built_repo: Path):
    export = built_repo / "results/export/demo_pointnet"
    for target in ("votenet", "plain"):
        sidecar = json.loads((export / f"{target}.json").read_text())
        assert sidecar["missing_keys"] == [] and sidecar["unexpected_keys"] == []
        assert sidecar["output_sha256"] == sha256_file(export / f"{target}.pth")
    assert (export / "plain.safetensors").exists()


def test_the_dag_ends_with_the_downstream_table_and_plots(built_repo: Path):
    summary = (built_repo / "results/summary.md").read_text()
    assert "| demo_pointnet | lidar_seg | linear | 2 |" in summary
    assert "| demo_pointnet | indoor_seg | finetune | 2 |" in summary
    for name in ("downstream.png", "training_demo_pointnet.png"):
        assert (built_repo / "results/report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((built_repo / "results/finetune/demo_pointnet/indoor_seg/metrics.json").read_text())
    assert set(metrics["results"]) == {"linear", "finetune"}
    assert "within_noise" in metrics["results"]["linear"]["pretrained_minus_scratch"]["miou"]


def test_an_enabled_external_job_runs_on_the_exported_weights(built_repo: Path):
    out = built_repo / "results/finetune/external/votenet_check"
    assert int((out / "loaded.txt").read_text()) > 0
    assert json.loads((out / "done.json").read_text())["exit_status"] == 0


def test_each_job_reads_its_settings_from_a_file_holding_only_what_changes_its_result(built_repo: Path):
    config = yaml.safe_load((built_repo / "config.yaml").read_text())
    settings = built_repo / "results/settings"
    run = yaml.safe_load((settings / "pretrain/demo_pointnet.yaml").read_text())["pretrain"]["demo_pointnet"]
    assert run["resources"] == {"nodes": 1, "tasks_per_node": 1}  # the global batch: batch_size x tasks
    assert {"enabled", "export_targets"}.isdisjoint(run) and run["epochs"] == DEMO_EPOCHS
    download = yaml.safe_load((settings / "download/demo_lidar.yaml").read_text())
    assert download == {"datasets": {"demo_lidar": {"source": config["datasets"]["demo_lidar"]["source"]}}}
    evaluate = yaml.safe_load((settings / "evaluate/demo_pointnet/indoor_seg.yaml").read_text())["evaluate"]
    assert list(evaluate["tasks"]) == ["indoor_seg"] and evaluate["seeds"] == [0, 1]
    log = (built_repo / "results/logs/pretrain/demo_pointnet.log").read_text()
    assert "epoch 1 step" in log and "depthcontrast: error" not in log


def test_changing_export_targets_reruns_only_export(built_repo: Path):
    with edited_config(built_repo) as config:
        config["pretrain"]["demo_pointnet"]["export_targets"] = ["votenet", "plain", "h3dnet"]
        write_config(built_repo, config)
        assert planned_jobs(built_repo) == {"export": 1, "all": 1}


def test_a_finished_dag_has_nothing_left_to_do(built_repo: Path):
    assert planned_jobs(built_repo) == {}


def test_editing_a_runs_slurm_resources_or_enabled_flag_reruns_nothing(built_repo: Path):
    with edited_config(built_repo) as config:
        run = config["pretrain"]["demo_pointnet"]
        run["enabled"] = True
        run["resources"] = {**run.get("resources", {}), "cpus_per_task": 1, "mem_mb": 9000, "runtime": 60}
        write_config(built_repo, config)
        assert planned_jobs(built_repo) == {}


def test_more_tasks_per_node_rerun_pretraining_and_what_follows(built_repo: Path):
    with edited_config(built_repo) as config:
        config["pretrain"]["demo_pointnet"]["resources"] = {"tasks_per_node": 2}
        write_config(built_repo, config)
        assert planned_jobs(built_repo) == {
            "settings": 1, "pretrain": 1, "export": 2, "finetune": 2, "summary": 1, "external_finetune": 1, "all": 1
        }  # fmt: skip


def test_forcerun_preprocess_reruns_preprocess_and_downstream_but_never_download(built_repo: Path):
    assert planned_jobs(built_repo, "--forcerun", "preprocess") == {
        "preprocess": 2, "pretrain": 1, "export": 2, "finetune": 2, "summary": 1, "external_finetune": 1, "all": 1
    }  # fmt: skip


def test_until_preprocess_and_a_changed_param_rerun_only_that_dataset_downstream(built_repo: Path):
    with edited_config(built_repo) as config:
        config["datasets"]["demo_lidar"]["preprocess"]["min_points"] = 600
        write_config(built_repo, config)
        assert planned_jobs(built_repo) == {
            "settings": 1, "preprocess": 1, "pretrain": 1, "export": 2, "finetune": 2, "summary": 1,
            "external_finetune": 1, "all": 1,
        }  # fmt: skip
        assert planned_jobs(built_repo, "--until", "preprocess") == {"settings": 1, "preprocess": 1}


def test_a_changed_pretraining_param_reruns_only_pretrain(built_repo: Path):
    with edited_config(built_repo) as config:
        config["pretrain"]["demo_pointnet"]["optimizer"]["lr"] = 0.01
        write_config(built_repo, config)
        assert planned_jobs(built_repo) == {
            "settings": 1,
            "pretrain": 1,
            "export": 2,
            "finetune": 2,
            "summary": 1,
            "external_finetune": 1,
            "all": 1,
        }


def test_a_failed_job_outside_the_runs_leaves_the_summary_as_it_was(built_repo: Path, tmp_path: Path):
    summary = built_repo / "results/summary.md"
    before = summary.read_bytes(), summary.stat().st_mtime_ns
    job = {"enabled": True, "run": "demo_pointnet", "target": "votenet", "workdir": str(built_repo), "command": "false"}
    (tmp_path / "failing_job.yaml").write_text(yaml.safe_dump({"external": {"fails": job}}))
    result = run_snakemake(built_repo, "--cores", "2", "--configfile", str(tmp_path / "failing_job.yaml"), check=False)
    assert result.returncode != 0 and "Error in rule external_finetune" in result.stderr
    assert "depthcontrast: results/summary.md left as it was: the failed job is no pretraining run" in result.stderr
    assert (summary.read_bytes(), summary.stat().st_mtime_ns) == before
