"""The pretrain stage: which of a run's settings change its training, and how the run's processes start before
depthcontrast.train trains it: as one process, under torchrun or srun (each process starts here), with srun from
inside a Slurm allocation (this process becomes srun), or with the original DepthContrast code's
`--multiprocessing-distributed` flags (this process spawns one per GPU)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthcontrast.log import setup_logging
from depthcontrast.slurm import TaskLayout, in_allocation_outside_step, srun_command

log = logging.getLogger(__name__)
# a run's settings that leave its training unchanged: editing them reruns no pretraining
NOT_TRAINING_SETTINGS = ("enabled", "export_targets", "evaluation", "resources")
# ...except these of `resources`: the global batch is batch_size x nodes x tasks_per_node
LAYOUT_SETTINGS = ("nodes", "tasks_per_node")
EXIT_FAILED = 1


def training_settings(run: Mapping[str, Any]) -> dict[str, Any]:
    """What the trainer gets of a validated run block (and records in the run's config.yaml)."""
    return {key: value for key, value in run.items() if key not in NOT_TRAINING_SETTINGS}


def run_settings(run: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a validated run block that changes its training: the workflow's settings file of the run."""
    return {**training_settings(run), "resources": {key: run["resources"][key] for key in LAYOUT_SETTINGS}}


@dataclass(frozen=True)
class OriginalLaunch:
    """The original DepthContrast code's launcher flags: --world-size counts nodes, --rank is this node, --ngpus
    processes per node, all meeting at --dist-url."""

    nodes: int
    node_rank: int
    gpus_per_node: int
    dist_url: str


@dataclass(frozen=True)
class PretrainJob:
    """One run to train and where: what every process of it needs."""

    run_name: str
    training: dict[str, Any]
    shard_dirs: tuple[Path, ...]
    out_dir: Path
    resume: bool
    device: str


def run_pretrain(
    run_name: str, run: Mapping[str, Any], shard_dirs: Sequence[Path], out_dir: Path, layout: TaskLayout,
    argv: Sequence[str], resume: bool = False, device: str = "auto", original: OriginalLaunch | None = None,
    debug: bool = False,
) -> int:  # fmt: skip
    """Train the validated run block `run` with `layout`'s processes; returns the exit status (0 done;
    train.EXIT_REQUEUE or EXIT_INTERRUPTED: checkpointed on a signal, rerun with resume).

    Inside a Slurm allocation but outside a job step, a layout of more than one task replaces this process with
    `srun` starting `depthcontrast <argv>` once per task (srun forwards Slurm's signals to every task).
    """
    from depthcontrast.launch import world_from_environment
    from depthcontrast.train import EXIT_INTERRUPTED, EXIT_REQUEUE, pretrain

    job = PretrainJob(run_name, training_settings(run), tuple(shard_dirs), out_dir, resume, device)
    if layout.world_size > 1 and original is None and in_allocation_outside_step():
        command = srun_command(layout, [sys.executable, "-m", "depthcontrast", *argv])
        log.info("starting %d tasks: %s", layout.world_size, " ".join(command[: command.index(sys.executable)]))
        logging.shutdown()
        os.execvp(command[0], command)
    if original is not None:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_original_worker, args=(job, original, debug), nprocs=original.gpus_per_node, join=True)
        except mp.ProcessExitedException as exc:
            return exc.exit_code if exc.exit_code in (EXIT_REQUEUE, EXIT_INTERRUPTED) else EXIT_FAILED
        return 0
    world = world_from_environment()
    if layout.world_size > 1 and not world.distributed:
        log.warning("pretrain %s asks for %d tasks, but this is no Slurm allocation: training as one process "
                    "(start it with srun or torchrun for more)", run_name, layout.world_size)  # fmt: skip
    return pretrain(job.run_name, job.training, job.shard_dirs, job.out_dir, world, resume=resume, device=device)


def _original_worker(local: int, job: PretrainJob, original: OriginalLaunch, debug: bool) -> None:
    """One process of the original-style launch (mp.spawn's target; its output goes where the parent's does)."""
    from depthcontrast.launch import world_from_original_flags
    from depthcontrast.train import pretrain

    setup_logging(None, debug=debug)
    world = world_from_original_flags(
        original.node_rank, original.nodes, original.gpus_per_node, local, original.dist_url
    )
    code = pretrain(job.run_name, job.training, job.shard_dirs, job.out_dir, world, resume=job.resume,
                    device=job.device)  # fmt: skip
    if code:
        sys.exit(code)
