"""`snakemake --profile slurm` and `srun` against a real single-node Slurm cluster started for this module
(scripts/local_slurm.py: munge + slurmctld + slurmd, no accounting database)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.train import EXIT_REQUEUE
from scripts.local_slurm import LocalCluster
from tests.conftest import BIN, copy_repo, run_cli, run_snakemake
from tests.slurm_cluster import job_state, jobs_by_comment, running_cluster, slurm, wait_until
from tests.test_sweeps import INDOOR, SWEEP, assert_sweep_outcome, sweep_config
from tests.test_train import TINY_RUN

pytestmark = pytest.mark.slow

# The profile's status polling starts at 40 s and grows by 10 s per idle poll (right for a shared cluster);
# here the first poll comes after 2 s. Outputs are on the same disk, so no long latency wait.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5")
NO_RETRIES = ("--retries", "0")  # the profile retries failed jobs; these tests want the first failure
DAG_TIMEOUT_S = 600
FAILURE_NOTICED_S = 240  # the plugin polls at most every 180 s; a failure must end the run within this
JOB_START_TIMEOUT_S = 120
LOCAL_RULES = ("all", "settings")  # run by Snakemake itself: writing a job's settings file needs no allocation
# A smaller tiny run for the srun tests: 48 indoor frames, 6 steps of 8 samples per epoch.
SRUN_RUN = {
    **TINY_RUN,
    "points_per_view": 1024,
    "augmentation_overrides": {"random_cuboid": {"npoints": 250}, "multiscale": {"sizes": [512, 1024]}},
    "batch_size": 8,
    "epochs": 1,
    "num_workers": 1,  # as in real runs: Slurm signals the DataLoader worker too, not only the trainer
}
SRUN_STEPS = 48 // 8


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    """The cluster, with SLURM_CONF and this environment's bin/ (where `depthcontrast` is) in os.environ:
    jobs inherit the submitting environment (sbatch --export=ALL), as after activating the venv."""
    with running_cluster() as running, pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(running.conf))
        env.setenv("PATH", str(BIN), prepend=os.pathsep)
        yield running


@pytest.fixture(scope="module")
def slurm_dag(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess, float]:
    """The demo DAG (shrunk, see set_demo_epochs) run with `snakemake --profile slurm`: repo, result, wall s."""
    repo = copy_repo(tmp_path_factory.mktemp("slurm_dag") / "repo")
    set_demo_epochs(repo, 1)
    start = time.monotonic()
    result = run_snakemake(repo, "--profile", "slurm", *FAST_POLLING, check=False, timeout=DAG_TIMEOUT_S)
    return repo, result, time.monotonic() - start


def set_demo_epochs(repo: Path, epochs: int) -> None:
    """Shrink the demo: `epochs` of pretraining, a one-seed one-epoch evaluation (command (a) runs it all)."""
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["pretrain"]["demo_pointnet"]["epochs"] = epochs
    config["evaluate"].update(seeds=[0], linear={"epochs": 1}, finetune={"epochs": 1})
    (repo / "config.yaml").write_text(yaml.safe_dump(config))


def test_the_demo_dag_runs_to_completion_through_slurm(slurm_dag: tuple[Path, subprocess.CompletedProcess, float]):
    repo, result, wall_s = slurm_dag
    print(f"demo DAG through Slurm: {wall_s:.0f} s wall")
    assert result.returncode == 0, result.stdout + result.stderr
    finished = re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", result.stderr, flags=re.MULTILINE)
    assert {"settings", "download", "preprocess", "pretrain", "all"} <= set(finished)
    submitted = [rule for rule in finished if rule not in LOCAL_RULES]
    assert result.stderr.count("has been submitted with SLURM jobid") == len(submitted)
    dry_run = run_snakemake(repo, "-n", "--cores", "1")
    assert "Nothing to be done" in dry_run.stdout + dry_run.stderr
    for dataset in ("demo_indoor", "demo_lidar"):
        assert (repo / "results/shards" / dataset / "index.json").exists()
    assert load_checkpoint(repo / "results/pretrain/demo_pointnet/last.pth")["epoch"] == 1
    assert (repo / "results/pretrain/demo_pointnet/metrics.csv").exists()


def test_a_failing_job_is_reported_and_snakemake_exits_nonzero(cluster: LocalCluster, tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    missing = tmp_path / "no_such_scans"
    config = {"datasets": {"mine": {"source": {"kind": "local", "path": str(missing)}}}, "pretrain": {}}
    (repo / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.monotonic()
    result = run_snakemake(
        repo, "--profile", "slurm", *FAST_POLLING, *NO_RETRIES, check=False, timeout=FAILURE_NOTICED_S
    )
    print(f"failing job noticed and snakemake ended after {time.monotonic() - start:.0f} s")
    assert result.returncode != 0
    assert "Error in rule download" in result.stderr
    assert "SLURM status is: 'FAILED'" in result.stderr
    assert f"{missing}: local source directory does not exist" in (repo / "results/logs/download/mine.log").read_text()


def test_scancel_of_the_running_pretrain_job_makes_snakemake_exit_nonzero(slurm_dag, tmp_path: Path):
    repo = slurm_dag[0]
    set_demo_epochs(repo, 5)  # a changed setting: pretrain runs again, long enough to be cancelled
    log = tmp_path / "snakemake.log"
    with open(log, "w") as out:
        workflow = subprocess.Popen(
            [str(BIN / "snakemake"), "--profile", "slurm", *FAST_POLLING, *NO_RETRIES], cwd=repo, stdout=out, stderr=out
        )
    try:
        running = wait_until(
            lambda: [job for job, state in jobs_by_comment("rule_pretrain").items() if state == "RUNNING"],
            JOB_START_TIMEOUT_S, "the pretrain job to run",
        )  # fmt: skip
        slurm("scancel", running[0])
        cancelled = time.monotonic()
        returncode = workflow.wait(timeout=FAILURE_NOTICED_S)
        print(f"scancel noticed and snakemake ended after {time.monotonic() - cancelled:.0f} s")
    finally:
        if workflow.poll() is None:
            workflow.kill()
        set_demo_epochs(repo, 1)
    assert returncode != 0
    assert "SLURM status is: 'CANCELLED'" in log.read_text()


@pytest.fixture(scope="module")
def tiny_config(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config with SRUN_RUN as run `tiny`, its results/ holding the built-in indoor frames as shards."""
    config = tmp_path_factory.mktemp("srun") / "config.yaml"
    dataset = {"source": {"kind": "builtin", "subset": "indoor"}}
    config.write_text(yaml.safe_dump({"datasets": {"demo_indoor": dataset}, "pretrain": {"tiny": SRUN_RUN}}))
    for stage in ("download", "preprocess"):
        done = run_cli(
            stage, "--config", str(config), "--dataset", "demo_indoor", "--results", str(config.parent / "results")
        )
        assert done.returncode == 0, done.stderr
    return config


def pretrain_command(config: Path, out: Path, *extra: str) -> list[str]:
    results = config.parent / "results"
    return [sys.executable, "-m", "depthcontrast", "pretrain", "tiny", "--config", str(config), "--results",
            str(results), "--out", str(out), "--device", "cpu", *extra]  # fmt: skip


def srun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["srun", "--kill-on-bad-exit=1", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_srun_with_two_tasks_trains_as_one_gloo_process_group(tiny_config: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    run = dict(SRUN_RUN, batch_size=SRUN_RUN["batch_size"] // 2)  # the same global batch over 2 ranks
    config = tiny_config.with_name("tiny_ddp.yaml")
    config.write_text(yaml.safe_dump({**yaml.safe_load(tiny_config.read_text()), "pretrain": {"tiny": run}}))
    result = srun("--ntasks", "2", *pretrain_command(config, out), cwd=config.parent)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(out / "last.pth")
    assert state["world_size"] == 2
    assert len(state["rng"]) == 2
    assert state["step"] == SRUN_STEPS


@pytest.mark.parametrize("tasks", [1, 2])
def test_sigterm_to_a_slurm_job_exits_75_and_the_resumed_job_matches_an_uninterrupted_run(
    tiny_config: Path, tmp_path: Path, tasks: int
):
    epochs = 2 * tasks  # 12 steps either way: long enough to be signalled mid-run
    config = tiny_config.with_name(f"tiny_{epochs}_epochs.yaml")
    run = dict(SRUN_RUN, epochs=epochs)
    config.write_text(yaml.safe_dump({**yaml.safe_load(tiny_config.read_text()), "pretrain": {"tiny": run}}))
    straight = tmp_path / "straight"
    done = srun("--ntasks", str(tasks), *pretrain_command(config, straight), cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    interrupted = tmp_path / "interrupted"
    wrapped = "srun " + subprocess.list2cmdline(pretrain_command(config, interrupted))
    job = slurm(
        "sbatch", "--parsable", "--ntasks", str(tasks), "--output", str(tmp_path / "job.log"), "--wrap", wrapped
    ).strip()  # fmt: skip
    metrics = interrupted / "resume" / "metrics.csv"
    wait_until(lambda: metrics.exists() and "\n0,2," in metrics.read_text(), JOB_START_TIMEOUT_S, "step 2")
    slurm("scancel", "--signal=TERM", job)  # what Slurm sends on pre-emption and at the time limit
    state, exit_status = wait_until(
        lambda: (found := job_state(job))[0] not in ("PENDING", "RUNNING", "COMPLETING") and found,
        JOB_START_TIMEOUT_S, "the signalled job to end",
    )  # fmt: skip
    log = (tmp_path / "job.log").read_text()
    assert exit_status == EXIT_REQUEUE, f"{state}, exit {exit_status}:\n{log}"  # every rank: no 143 from srun
    stopped = load_checkpoint(interrupted / "resume" / "last.pth")
    assert 2 <= stopped["step"] < 12 and stopped["world_size"] == tasks
    assert not (interrupted / "last.pth").exists()

    resumed = srun("--ntasks", str(tasks), *pretrain_command(config, interrupted, "--resume"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    expected = load_checkpoint(straight / "last.pth")["model"]
    actual = load_checkpoint(interrupted / "last.pth")["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def repo_with_shards(tmp_path: Path, tiny_config: Path, config: dict) -> Path:
    """A repository copy with `config` and the built-in indoor shards already in results/ (no download and
    preprocess jobs: each job through Slurm costs ~15 s)."""
    repo = copy_repo(tmp_path / "repo")
    shutil.copytree(tiny_config.parent / "results", repo / "results")
    (repo / "config.yaml").write_text(yaml.safe_dump(config))
    return repo


def read_or_empty(path: Path) -> str:
    """The file's text, or "" while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_sweep_through_slurm_runs_its_jobs_side_by_side_and_keeps_going_past_the_failed_run(
    tiny_config: Path, tmp_path: Path
):
    repo = repo_with_shards(tmp_path, tiny_config, sweep_config(SWEEP, evaluate={"tasks": {}}))
    start = time.monotonic()
    result = run_snakemake(repo, "--profile", "slurm", *FAST_POLLING, *NO_RETRIES, "--keep-going", "--jobs", "2",
                           check=False, timeout=DAG_TIMEOUT_S)  # fmt: skip
    print(f"3-run sweep through Slurm, one failing: {time.monotonic() - start:.0f} s wall")
    assert result.returncode != 0
    assert result.stderr.count("has been submitted with SLURM jobid") == 3  # the runs; the summary job never starts
    assert_sweep_outcome(repo, result.stderr)


def test_a_two_task_run_through_the_profile_is_started_by_srun_as_one_gloo_group(tiny_config: Path, tmp_path: Path):
    run = {**SRUN_RUN, "batch_size": 4, "export_targets": [], "resources": {"tasks_per_node": 2, "cpus_per_task": 1}}
    config = {"datasets": INDOOR, "pretrain": {"tiny": run}, "evaluate": {"tasks": {}}}
    repo = repo_with_shards(tmp_path, tiny_config, config)
    start = time.monotonic()
    result = run_snakemake(repo, "--profile", "slurm", *FAST_POLLING, *NO_RETRIES, "--verbose",
                           "results/pretrain/tiny/last.pth", timeout=DAG_TIMEOUT_S)  # fmt: skip
    print(f"2-task run through the profile: {time.monotonic() - start:.0f} s wall")
    sbatch = re.findall(r"^sbatch call: (.*)$", result.stderr, flags=re.MULTILINE)
    assert len(sbatch) == 1
    for flag in ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem 8000", "-t 1440", "--signal=TERM@300"):
        assert f" {flag} " in sbatch[0], sbatch[0]
    log = (repo / "results/logs/pretrain/tiny.log").read_text()
    assert "starting 2 tasks: srun --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --kill-on-bad-exit=1" in log
    state = load_checkpoint(repo / "results/pretrain/tiny/last.pth")
    assert state["world_size"] == 2
    assert len(state["rng"]) == 2
    assert state["step"] == SRUN_STEPS  # 48 frames in global batches of 2 x 4


def test_sigterm_to_a_pretrain_job_under_snakemake_requeues_it_and_the_retry_resumes_to_the_same_weights(
    tiny_config: Path, tmp_path: Path
):
    # 12 steps: long enough to be signalled mid-run; one CPU per task, so Snakemake's OMP_NUM_THREADS (the rule's
    # threads) matches the reference run's CLI_ENV: CPU runs are bit-exact only at the same thread count
    run = {**SRUN_RUN, "epochs": 2, "export_targets": [], "resources": {"cpus_per_task": 1}}
    config = {"datasets": INDOOR, "pretrain": {"tiny": run}, "evaluate": {"tasks": {}}}
    reference = tmp_path / "straight.yaml"
    reference.write_text(yaml.safe_dump(config))
    straight = run_cli("pretrain", "tiny", "--config", str(reference), "--results", str(tiny_config.parent / "results"),
                       "--out", str(tmp_path / "straight"), "--device", "cpu")  # fmt: skip
    assert straight.returncode == 0, straight.stderr

    repo = repo_with_shards(tmp_path, tiny_config, config)
    metrics = repo / "results/pretrain/tiny/resume/metrics.csv"
    pretrain_log = repo / "results/logs/pretrain/tiny.log"
    with open(tmp_path / "snakemake.log", "w") as out:
        workflow = subprocess.Popen(
            [str(BIN / "snakemake"), "--profile", "slurm", *FAST_POLLING, "results/pretrain/tiny/last.pth"],
            cwd=repo, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_until(lambda: "\n0,2," in read_or_empty(metrics), JOB_START_TIMEOUT_S, "step 2 of the first attempt")
        job = next(job for job, state in jobs_by_comment("rule_pretrain").items() if state == "RUNNING")
        slurm("scancel", "--signal=TERM", job)  # what the rule's --signal=TERM@N sends before the time limit
        signalled = time.monotonic()
        returncode = workflow.wait(timeout=DAG_TIMEOUT_S)
        print(f"signal -> exit 75 -> retry -> resumed run finished: {time.monotonic() - signalled:.0f} s")
    finally:
        if workflow.poll() is None:
            workflow.kill()
    snakemake_log = (tmp_path / "snakemake.log").read_text()
    assert returncode == 0, snakemake_log
    assert job_state(job)[0] == "FAILED"
    first_attempt = (repo / ".snakemake/slurm_logs/rule_pretrain/tiny" / f"{job}.log").read_text()  # kept: it failed
    assert f"returned non-zero exit status {EXIT_REQUEUE}." in first_attempt  # the trainer's, in Snakemake's words
    assert snakemake_log.count("has been submitted with SLURM jobid") == 2  # the first attempt and its retry
    resumed = re.search(r"resumed from results/pretrain/tiny/resume/last.pth at epoch (\d+), batch (\d+)",
                        pretrain_log.read_text())  # fmt: skip
    assert resumed and 2 <= int(resumed[1]) * SRUN_STEPS + int(resumed[2]) < 2 * SRUN_STEPS
    expected = load_checkpoint(tmp_path / "straight" / "last.pth")["model"]
    actual = load_checkpoint(repo / "results/pretrain/tiny/last.pth")["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
