"""The trainer: schedule, launch environments, signal checkpoints, exact resume, damaged checkpoints,
and a 2-process gloo run through the original's launcher flags."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.config import validate_config
from depthcontrast.errors import ConfigError
from depthcontrast.launch import world_from_environment, world_from_original_flags
from depthcontrast.lr_schedule import learning_rate
from depthcontrast.specs import parse_run
from depthcontrast.train import EXIT_REQUEUE, check_batch_fits
from tests.conftest import CLI_ENV, run_cli

TINY_RUN = {
    "datasets": ["demo_indoor"],
    "backbone": {"npoints": [64, 32, 16, 8], "head_dims": [512, 64, 32]},
    "augmentations": "indoor",
    "augmentation_overrides": {"random_cuboid": {"npoints": 500}, "multiscale": {"sizes": [1024, 2048]}},
    "points_per_view": 2048,
    "batch_size": 4,
    "epochs": 2,
    "optimizer": {"lr": 0.05},
    "loss": {"num_negatives": 16, "embedding_dim": 32},
    "num_workers": 0,
    "checkpoint_every_epochs": 1,
    "log_every_steps": 1,
    "deterministic": True,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/ with the built-in indoor frames preprocessed (48 samples), and a config with the tiny run, as
    `tiny` (in-process data loading), `tiny_workers` (one DataLoader worker process) and `big_batch` (batches of
    64)."""
    results = tmp_path_factory.mktemp("train") / "results"
    config = results.parent / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "datasets": {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}}},
                "pretrain": {
                    "tiny": TINY_RUN,
                    "tiny_workers": {**TINY_RUN, "num_workers": 1},
                    "big_batch": {**TINY_RUN, "batch_size": 64},
                },
            }
        )
    )
    for stage in ("download", "preprocess"):
        done = run_cli(stage, "--config", str(config), "--dataset", "demo_indoor", "--results", str(results))
        assert done.returncode == 0, done.stderr
    return results


def pretrain_args(results: Path, out: Path, *extra: str, run: str = "tiny") -> list[str]:
    config = results.parent / "config.yaml"
    return ["pretrain", run, "--config", str(config), "--results", str(results), "--out", str(out), *extra]


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_cosine_schedule_matches_the_original_per_epoch_and_warms_up_linearly():
    run = validate_config(
        {"datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}}, "pretrain": {"r": {"datasets": ["d"]}}}
    )["pretrain"]["r"]
    spec = parse_run(run)
    assert learning_rate(spec, 0, 5, 10) == pytest.approx(0.12)
    halfway = 0.00012 + (0.12 - 0.00012) * 0.5 * (1 + math.cos(math.pi * 500 / 1000))
    assert learning_rate(spec, 500, 3, 10) == pytest.approx(halfway)
    assert learning_rate(spec, 1000, 0, 10) == pytest.approx(0.00012)
    run["schedule"].update(warmup_epochs=2, per_step=True)
    spec = parse_run(run)
    assert learning_rate(spec, 0, 0, 10) == pytest.approx(0.12 * 0.1 / 2)
    assert learning_rate(spec, 1, 9, 10) == pytest.approx(0.12)


def test_rank_and_world_come_from_torchrun_slurm_or_the_original_flags():
    torchrun = world_from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.init_method) == (3, 8, 1, "env://")
    task = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu7,gpu8",
            "SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "0"}  # fmt: skip
    slurm = world_from_environment(task)
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (5, 8, 1)
    assert slurm.init_method == "tcp://gpu7:21234"
    batch_script = {key: value for key, value in task.items() if key != "SLURM_STEP_ID"}
    assert not world_from_environment({**batch_script, "SLURM_PROCID": "0"}).distributed  # one process, not rank 0
    assert not world_from_environment({}).distributed
    original = world_from_original_flags(node_rank=1, num_nodes=4, gpus_per_node=8, local=2, dist_url="tcp://h:1")
    assert (original.rank, original.world_size) == (10, 32)


def signal_mid_epoch(results: Path, out: Path, sig: signal.Signals, *, run: str = "tiny", group: bool = False,
                     flags: tuple[str, ...] = ()) -> subprocess.Popen:  # fmt: skip
    """Start pretraining `run` into `out` (`flags` before the verb, stderr to `stderr_of(out)`) and send `sig` once
    epoch 1 is under way: to the trainer process alone, or with `group` to its whole process group, as a
    terminal's Ctrl-C does."""
    command = [sys.executable, "-m", "depthcontrast", *flags, *pretrain_args(results, out, run=run)]
    with open(stderr_of(out), "w") as stderr:
        victim = subprocess.Popen(command, env=CLI_ENV, stderr=stderr, start_new_session=group)
    metrics = out / "resume" / "metrics.csv"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and "\n1,2," in metrics.read_text()):  # epoch 1 under way
        assert victim.poll() is None, "the run ended before it could be signalled"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if group:
        os.killpg(victim.pid, sig)
    else:
        victim.send_signal(sig)
    return victim


def stderr_of(out: Path) -> Path:
    return out.with_name(f"{out.name}.stderr")


def assert_resume_finishes_like(results: Path, interrupted: Path, straight: Path, run: str = "tiny") -> None:
    """`--resume` of the `interrupted` run ends with the weights and losses of the uninterrupted one."""
    resumed = run_cli(*pretrain_args(results, interrupted, "--resume", run=run))
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = model_state(straight / "last.pth"), model_state(interrupted / "last.pth")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert loss_column(straight / "metrics.csv") == loss_column(interrupted / "metrics.csv")
    with open(interrupted / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["samples"]) for row in rows] == [int(row["global_step"]) * TINY_RUN["batch_size"] for row in rows]
    seconds = [float(row["run_s"]) for row in rows]  # the resumed attempt goes on from the first one's time
    assert seconds == sorted(seconds) and seconds[0] > 0


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_for_requeue_and_resume_is_bit_exact(shards: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    assert run_cli(*pretrain_args(shards, straight)).returncode == 0
    assert not (straight / "resume").exists()
    assert sorted(p.name for p in straight.glob("checkpoint-ep*.pth")) == ["checkpoint-ep1.pth", "checkpoint-ep2.pth"]

    interrupted = tmp_path / "interrupted"
    victim = signal_mid_epoch(shards, interrupted, signal.SIGTERM)
    assert victim.wait(timeout=120) == EXIT_REQUEUE
    saved = load_checkpoint(interrupted / "resume" / "last.pth")
    assert saved["epoch"] == 1 and saved["batch"] >= 2
    assert not (interrupted / "last.pth").exists()
    assert_resume_finishes_like(shards, interrupted, straight)


def loss_column(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        return [(row["global_step"], row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes_from_the_last_epoch_checkpoint(shards: Path, tmp_path: Path):
    out = tmp_path / "killed"
    victim = subprocess.Popen([sys.executable, "-m", "depthcontrast", *pretrain_args(shards, out)], env=CLI_ENV)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-ep1.pth").exists():
        assert victim.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed = run_cli(*pretrain_args(shards, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


@pytest.mark.slow
def test_a_multi_task_layout_outside_slurm_trains_as_one_process_and_says_so(shards: Path, tmp_path: Path):
    out = tmp_path / "one"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    args = pretrain_args(shards, out, "--nodes", "2", "--tasks-per-node", "4", "--device", "cpu")
    result = subprocess.run([sys.executable, "-m", "depthcontrast", *args], env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "asks for 8 tasks, but this is no Slurm allocation: training as one process" in result.stderr
    assert load_checkpoint(out / "last.pth")["world_size"] == 1


def test_a_batch_larger_than_the_dataset_is_one_line_naming_the_key_and_the_size_before_training(
    shards: Path, tmp_path: Path
):
    out = tmp_path / "big"
    result = run_cli(*pretrain_args(shards, out, run="big_batch"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"depthcontrast: error: pretrain.big_batch.batch_size: 64 per process x 1 process needs at least 64 samples, "
        f"but {shards / 'shards/demo_indoor'} hold 48 samples; set it to at most 48 or pretrain on more data"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("batch_size", "world_size", "fix"), [(32, 2, "set it to at most 24"), (1, 64, "use at most 48")]
)
def test_a_global_batch_larger_than_the_dataset_says_what_fits(
    shards: Path, batch_size: int, world_size: int, fix: str
):
    dirs = [shards / "shards" / "demo_indoor"]
    check_batch_fits("r", 24, dirs, world_size=2)  # 48 samples: exactly one global batch
    with pytest.raises(ConfigError, match=f"needs at least {batch_size * world_size} samples, .* 48 samples; {fix}"):
        check_batch_fits("r", batch_size, dirs, world_size)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_a_damaged_checkpoint_is_a_clear_error_never_a_silent_restart(shards: Path, tmp_path: Path, damage: str):
    out = tmp_path / "run"
    checkpoint = out / "resume" / "last.pth"
    checkpoint.parent.mkdir(parents=True)
    if damage == "foreign":
        torch.save({"epoch": 150, "model": {}}, checkpoint)  # the original's layout
    else:
        torch.save({"model": {"w": torch.zeros(1000)}}, checkpoint)
        data = checkpoint.read_bytes()
        checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    result = run_cli(*pretrain_args(shards, out, "--resume"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(checkpoint) in result.stderr
    assert "checkpoint" in result.stderr.splitlines()[-1]
    assert not (out / "last.pth").exists()


@pytest.mark.slow
def test_the_original_launcher_flags_run_two_gloo_processes_as_one_group(shards: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    port = 29500 + os.getpid() % 1000
    args = pretrain_args(shards, out, "--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
                         "--ngpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}", "--device", "cpu")  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(out / "last.pth")
    assert state["world_size"] == 2
    assert len(state["rng"]) == 2  # every rank's RNG state is kept
    steps_per_epoch = 48 // (TINY_RUN["batch_size"] * 2)
    assert state["step"] == steps_per_epoch * TINY_RUN["epochs"]
    queue_ptr = state["model"]["queue_ptr_point"].item()
    assert queue_ptr == (state["step"] * TINY_RUN["batch_size"] * 2) % TINY_RUN["loss"]["num_negatives"]
