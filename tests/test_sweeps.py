"""Sweeps: a grid in config.yaml becomes named pretraining runs; with --keep-going a failed run stops none of the
others, and results/summary.md covers the finished runs and names the failed one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.config import validate_config
from depthcontrast.errors import ConfigError
from depthcontrast.report import INCOMPLETE_MTIME_S
from depthcontrast.run_status import FAILED, FINISHED, NOT_RUN, STOPPED, run_status
from tests.conftest import run_cli, run_snakemake
from tests.test_train import TINY_RUN

INDOOR = {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}}}
# 48 indoor frames, 6 steps of 8 per epoch; num_negatives 12 passes the schema but is no multiple of the global
# batch (8), so that run fails when it starts.
SWEEP_BASE = {
    **TINY_RUN,
    "points_per_view": 1024,
    "augmentation_overrides": {"random_cuboid": {"npoints": 250}, "multiscale": {"sizes": [512, 1024]}},
    "batch_size": 8,
    "epochs": 1,
    "export_targets": [],
    "resources": {"cpus_per_task": 1},  # two runs at once on two cores
}
SWEEP = {"base": SWEEP_BASE, "grid": {"loss.num_negatives": {"q16": 16, "q32": 32, "q12": 12}}}
FINISHING, FAILING = ("tiny-q16", "tiny-q32"), "tiny-q12"


def sweep_config(sweep: dict, **extra) -> dict:
    return {"datasets": INDOOR, "sweeps": {"tiny": sweep}, **extra}


def test_a_grid_expands_into_one_named_run_per_combination_with_nested_settings():
    sweep = {
        "base": {"datasets": ["demo_indoor"], "optimizer": {"momentum": 0.8}},
        "grid": {"backbone.scale": [1, 2], "optimizer.lr": [0.03, 0.1], "augmentations": ["indoor"]},
    }
    runs = validate_config(sweep_config(sweep))["pretrain"]
    assert sorted(runs) == [f"tiny-scale{s}-lr{lr}-indoor" for s in (1, 2) for lr in ("0_03", "0_1")]
    run = runs["tiny-scale2-lr0_1-indoor"]
    assert (run["backbone"]["scale"], run["optimizer"]["lr"], run["optimizer"]["momentum"]) == (2, 0.1, 0.8)
    assert run["epochs"] == 1000 and run["resources"]["tasks_per_node"] == 1  # defaults filled as for any run


def test_mapping_values_are_labelled_by_their_keys_and_checked_like_any_run():
    sweep = {"base": {"datasets": ["demo_indoor"]}, "grid": {"datasets": {"indoor": ["demo_indoor"], "x": ["nope"]}}}
    with pytest.raises(ConfigError, match=r"pretrain.tiny-x.datasets: 'nope' is not a configured dataset"):
        validate_config(sweep_config(sweep))
    sweep["grid"]["datasets"].pop("x")
    assert list(validate_config(sweep_config(sweep))["pretrain"]) == ["tiny-indoor"]


@pytest.mark.parametrize(
    ("sweep", "pretrain", "message"),
    [
        ({"base": {"datasets": ["demo_indoor"]}, "grid": {"seed": [1]}}, {"tiny-seed1": {"datasets": ["demo_indoor"]}},
         "sweeps.tiny: run 'tiny-seed1' is defined twice"),
        ({"base": {"datasets": ["demo_indoor"]}, "grid": {"backbone.scal": [1]}}, {},
         "pretrain.tiny-scal1.backbone: unknown key 'scal'"),
        ({"base": {"datasets": ["demo_indoor"]}, "grid": {}}, {}, "sweeps.tiny.grid: {} should be non-empty"),
        ({"base": {"datasets": ["demo_indoor"], "seed": 3}, "grid": {"seed.x": [1]}}, {},
         "sweeps.tiny: grid key 'seed.x': 'seed' is not a mapping in `base`"),
    ],
)  # fmt: skip
def test_a_bad_sweep_is_one_line_naming_the_sweep_or_its_run(sweep: dict, pretrain: dict, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(sweep_config(sweep, pretrain=pretrain))


def test_run_status_tells_finished_stopped_failed_and_not_run_apart(tmp_path: Path):
    results = tmp_path / "results"
    done = results / "pretrain" / "done"
    done.mkdir(parents=True)
    (done / "last.pth").write_bytes(b"x")
    (done / "metrics.csv").write_text("epoch,global_step\n0,6\n")
    resume = results / "pretrain" / "cut" / "resume"
    resume.mkdir(parents=True)
    (resume / "last.pth").write_bytes(b"x")
    (resume / "metrics.csv").write_text("epoch,global_step\n0,3\n")
    logs = results / "logs" / "pretrain"
    logs.mkdir(parents=True)
    (logs / "cut.log").write_text("INFO epoch 0 step 3\nWARNING signal 15: checkpointed at step 3; exit 75\n")
    (logs / "bad.log").write_text("INFO start\ndepthcontrast: error: queue size 12 is wrong\nsrun: error: task 0\n")
    finetune_logs = results / "logs" / "finetune" / "done"
    finetune_logs.mkdir(parents=True)
    (finetune_logs / "seg.log").write_text("ERROR depthcontrast: no labelled points\n")

    done_status = run_status(results, "done", ["seg", "other"])
    assert done_status.state == FINISHED and not done_status.complete
    assert done_status.missing_tasks == (("seg", "ERROR depthcontrast: no labelled points"), ("other", NOT_RUN))
    cut = run_status(results, "cut")
    assert cut.state == STOPPED and "epoch 0, step 3" in cut.detail
    bad = run_status(results, "bad")
    assert (bad.state, bad.detail) == (FAILED, "depthcontrast: error: queue size 12 is wrong")
    assert run_status(results, "never").state == NOT_RUN


@pytest.mark.slow
def test_keep_going_finishes_the_other_runs_and_the_summary_names_the_failed_one(repo_copy: Path):
    (repo_copy / "config.yaml").write_text(yaml.safe_dump(sweep_config(SWEEP, evaluate={"tasks": {}})))
    result = run_snakemake(repo_copy, "--keep-going", "--jobs", "2", check=False)
    assert result.returncode != 0
    assert_sweep_outcome(repo_copy, result.stderr)

    listing = run_cli("summarize", cwd=repo_copy)
    assert listing.returncode == 1
    assert re.search(rf"^{FAILING}\tfailed\tdepthcontrast: error: queue size 12", listing.stdout, flags=re.M)

    config = sweep_config({**SWEEP, "grid": {"loss.num_negatives": {"q16": 16, "q32": 32}}}, evaluate={"tasks": {}})
    (repo_copy / "config.yaml").write_text(yaml.safe_dump(config))
    fixed = run_snakemake(repo_copy, "--jobs", "2")
    assert re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", fixed.stderr, flags=re.M) == ["summary", "all"]
    assert "Incomplete" not in (repo_copy / "results/summary.md").read_text()


def assert_sweep_outcome(repo: Path, snakemake_stderr: str) -> None:
    """The finishing runs finished, the failing one failed with its one-line error, and summary.md says so."""
    assert "Error in rule pretrain" in snakemake_stderr and f"run={FAILING}" in snakemake_stderr
    for run in FINISHING:
        assert load_checkpoint(repo / "results/pretrain" / run / "last.pth")["epoch"] == 1
    assert not (repo / "results/pretrain" / FAILING / "last.pth").exists()
    summary = (repo / "results/summary.md").read_text()
    assert f"**Incomplete**: 2 runs finished; not finished: {FAILING}" in summary
    for run in FINISHING:
        assert re.search(rf"^\| {run} \| 1 \| 6 \|", summary, flags=re.M), summary
        assert (repo / "results/report" / f"training_{run}.png").exists()
    assert re.search(rf"^\| {FAILING} \| failed \| depthcontrast: error: queue size 12 ", summary, flags=re.M)
    assert os.stat(repo / "results/summary.md").st_mtime == INCOMPLETE_MTIME_S  # older than any input: rebuilt next
