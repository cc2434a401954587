"""DDP with NCCL on one and two GPUs of one machine, through torchrun and the real CLI (skipped without).

- A 2-GPU run at batch B per GPU sees the same global batches and views as a 1-GPU run at batch 2B
  (data/sampler.py, data/views.py), so its loss must track the 1-GPU run's; only BatchNorm statistics
  (per GPU), the key batch-shuffle permutation and float reduction order differ. The yardstick is the
  gap between two 1-GPU runs that differ only in the seed.
- A 1- or 2-GPU run whose processes get SIGTERM mid-epoch (as Slurm signals every task) checkpoints, exits
  75 on every rank, and `--resume` continues from the checkpoint to the same number of steps with
  every step logged once.

CPU twins of both (gloo) are in tests/test_train.py and tests/test_slurm.py. Run with
`pytest -m gpu -s tests/test_ddp_gpu.py` to see the figures.
"""

from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.data.records import Sample
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.train import EXIT_REQUEUE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

FRAMES, FRAME_POINTS = 256, 20_000
GLOBAL_BATCH = 32
RUN = {
    "datasets": ["synthetic"],
    "backbone": {"name": "pointnet2_ssg", "scale": 1, "npoints": [2048, 1024, 512, 256], "head_dims": None},
    "augmentations": "indoor", "augmentation_overrides": {}, "points_per_view": 8192,
    "batch_size": GLOBAL_BATCH, "epochs": 3,
    "optimizer": {"name": "sgd", "lr": 0.12, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False},
    "schedule": {"name": "cosine", "final_lr": 0.00012, "warmup_epochs": 0, "per_step": False},
    "loss": {"temperature": 0.1, "num_negatives": 4096, "embedding_dim": 128, "momentum": 0.999},
    "precision": "fp32", "compile": True, "augment_on": "cpu", "grad_clip_norm": None, "checkpoint_every_epochs": 1,
    "num_workers": 4,
    "verify_shards": True, "seed": 0, "deterministic": False, "log_every_steps": 1,
}  # fmt: skip
STEPS = FRAMES // GLOBAL_BATCH * RUN["epochs"]
TRACKING_SLACK = 2.0  # the 2-GPU gap may be at most this many times the seed-to-seed gap
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 synthetic rooms (a floor plus boxes), 20,000 points each, in HDF5 shards."""
    folder = tmp_path_factory.mktemp("ddp") / "shards"
    rng = np.random.default_rng(0)
    with ShardWriter(
        folder, dataset="synthetic", source="synthetic", params={}, samples_per_shard=64, compression="none",
        compression_level=0, xyz_quantum_m=None,
    ) as writer:  # fmt: skip
        for i in range(FRAMES):
            floor = np.c_[rng.uniform(-3, 3, (FRAME_POINTS // 2, 2)), np.zeros(FRAME_POINTS // 2)]
            corners = rng.uniform(-2.5, 2.5, (6, 3)) * [1, 1, 0.3] + [0, 0, 0.8]
            boxes = corners[rng.integers(0, 6, FRAME_POINTS // 2)] + rng.uniform(-0.4, 0.4, (FRAME_POINTS // 2, 3))
            writer.add(Sample(sample_id=f"synthetic/{i:04d}", points=np.concatenate([floor, boxes]).astype(np.float32)))
    return folder


def torchrun(gpus: int, run: dict, shards: Path, out: Path, *extra: str) -> subprocess.Popen:
    settings = out.parent / f"{out.name}.settings.yaml"  # as the workflow writes it for the run
    settings.write_text(yaml.safe_dump({"pretrain": {"ddp": run}}))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
        "-m", "depthcontrast", "pretrain", "ddp", "--settings", str(settings), "--shards", str(shards),
        "--out", str(out), "--device", "cuda", *extra,
    ]  # fmt: skip
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "2"}
    with open(out.parent / f"{out.name}.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, out: Path) -> int:
    """Wait for a torchrun launch; print the tail of its log unless it ended with 0."""
    code = process.wait(timeout=RUN_TIMEOUT_S)
    if code != 0:
        print((out.parent / f"{out.name}.log").read_text()[-3000:])
    return code


def losses(metrics: Path) -> dict[int, float]:
    with open(metrics, newline="") as handle:
        return {int(row["global_step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def mean_gap(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys()
    return statistics.fmean(abs(a[step] - b[step]) for step in a)


@two_gpus
def test_two_gpu_loss_tracks_a_one_gpu_run_at_the_same_global_batch(shards: Path, tmp_path: Path):
    runs = {
        "1gpu": (1, {**RUN, "batch_size": GLOBAL_BATCH}),
        "1gpu_seed1": (1, {**RUN, "batch_size": GLOBAL_BATCH, "seed": 1}),
        "2gpu": (2, {**RUN, "batch_size": GLOBAL_BATCH // 2}),
    }
    curves = {}
    for name, (gpus, run) in runs.items():
        out = tmp_path / name
        assert finish(torchrun(gpus, run, shards, out), out) == 0
        curves[name] = losses(out / "metrics.csv")
        assert len(curves[name]) == STEPS
    ddp_gap = mean_gap(curves["2gpu"], curves["1gpu"])
    seed_gap = mean_gap(curves["1gpu_seed1"], curves["1gpu"])
    print(f"\nmean |loss gap| per step over {STEPS} steps: 2 GPUs vs 1 GPU {ddp_gap:.4f}, "
          f"1 GPU seed 1 vs seed 0 {seed_gap:.4f}; first/last loss 1 GPU "
          f"{curves['1gpu'][1]:.4f}/{curves['1gpu'][STEPS]:.4f}, 2 GPUs "
          f"{curves['2gpu'][1]:.4f}/{curves['2gpu'][STEPS]:.4f}")  # fmt: skip
    assert ddp_gap <= TRACKING_SLACK * seed_gap


def worker_pids(launcher: int) -> list[int]:
    """The torchrun workers: children of the launcher whose command line runs depthcontrast."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == launcher and b"depthcontrast" in cmdline:
            pids.append(int(status.parent.name))
    return pids


@pytest.mark.parametrize("gpus", [1, pytest.param(2, marks=two_gpus)])
def test_a_signalled_gpu_run_exits_75_and_resumes_from_its_checkpoint(shards: Path, tmp_path: Path, gpus: int):
    run = {**RUN, "batch_size": GLOBAL_BATCH // gpus}
    out = tmp_path / "killed"
    process = torchrun(gpus, run, shards, out)
    metrics = out / "resume" / "metrics.csv"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > STEPS // 2):  # mid-run, past epoch 1
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be signalled"
        time.sleep(0.5)
    workers = worker_pids(process.pid)
    assert len(workers) == gpus
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    assert finish(process, out) != 0  # torchrun reports its workers' exit 75 as a failure
    log = (out.parent / "killed.log").read_text()
    assert log.count(f"exit {EXIT_REQUEUE} to be requeued") >= 1
    stopped = load_checkpoint(out / "resume" / "last.pth", map_location="cpu")
    assert 0 < stopped["step"] < STEPS and stopped["world_size"] == gpus

    assert finish(torchrun(gpus, run, shards, out, "--resume"), out) == 0
    resumed_log = (out.parent / "killed.log").read_text()
    assert f"at epoch {stopped['epoch']}, batch {stopped['batch']}" in resumed_log
    final = load_checkpoint(out / "last.pth", map_location="cpu")
    assert final["step"] == STEPS and final["epoch"] == RUN["epochs"]
    assert sorted(losses(out / "metrics.csv")) == list(range(1, STEPS + 1))
    print(f"\nsignalled at step {stopped['step']} (epoch {stopped['epoch']}, batch {stopped['batch']}); "
          f"resumed and finished at step {final['step']}")  # fmt: skip
