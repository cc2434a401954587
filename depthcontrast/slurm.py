"""A pretraining run on Slurm: its `resources:` block as snakemake-executor-plugin-slurm resources, and the
`srun` that starts one task per GPU inside the allocation.

One task: the plugin runs the rule inside its own `srun -n1` step (resources `gpu`, `cpus_per_task`, ...).
More tasks: the resource `mpi` tells the plugin to leave the launch to the rule, which runs
`depthcontrast pretrain`; that process, inside the allocation but outside any job step, starts the tasks with
`srun` (rank, world size and rendezvous then come from Slurm's environment, see launch.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JOB_RESOURCES = (
    "nodes", "cpus_per_task", "mem_mb", "runtime", "slurm_extra", "gpus_per_task", "gpu", "gpu_model", "mpi",
    "tasks_per_node", "tasks", "gres", "tasks_per_gpu",
)  # fmt: skip


@dataclass(frozen=True)
class TaskLayout:
    """How many processes a run starts, where, and with what each."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_task: int = 0
    cpus_per_task: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @classmethod
    def of_run(cls, resources: Mapping[str, Any]) -> TaskLayout:
        """The layout that a run's validated `resources:` block asks for."""
        spec = ResourcesSpec.of_block(resources)
        return cls(spec.nodes, spec.tasks_per_node, int(spec.gpu), spec.cpus_per_task)


@dataclass(frozen=True)
class ResourcesSpec:
    """What a run's job asks of Slurm: its validated `resources:` block, typed."""

    nodes: int
    tasks_per_node: int
    gpu: bool
    gpu_model: str | None
    cpus_per_task: int
    mem_mb: int
    runtime: int  # minutes
    signal_before_limit_s: int

    @classmethod
    def of_block(cls, resources: Mapping[str, Any]) -> ResourcesSpec:
        """From a validated `resources:` block (the schema has filled every key)."""
        return cls(**{name: resources[name] for name in cls.__dataclass_fields__})


def job_resources(resources: Mapping[str, Any]) -> dict[str, int | str]:
    """The pretrain rule's resources: what the Slurm plugin's sbatch asks for, from the run's `resources:` block,
    and `gpus_per_task` (the plugin ignores it) for the rule's srun."""
    spec = ResourcesSpec.of_block(resources)
    layout = TaskLayout.of_run(resources)
    asked: dict[str, int | str] = {
        "nodes": layout.nodes,
        "cpus_per_task": layout.cpus_per_task,
        "mem_mb": spec.mem_mb,  # sbatch --mem: per node
        "runtime": spec.runtime,
        "slurm_extra": f"--signal=TERM@{spec.signal_before_limit_s}",  # every task, not the batch shell
        "gpus_per_task": layout.gpus_per_task,
    }
    model = f"{spec.gpu_model}:" if spec.gpu_model else ""
    if layout.world_size == 1:
        if layout.gpus_per_task:
            asked["gpu"] = 1  # --gpus=[model:]1, also given to the plugin's own srun step
            if model:
                asked["gpu_model"] = spec.gpu_model
        return asked
    asked["mpi"] = "srun"  # the plugin then runs the rule without its own srun step; the rule calls srun
    if layout.tasks_per_node > 1:
        asked["tasks_per_node"] = layout.tasks_per_node  # --ntasks-per-node (the plugin takes it for mpi jobs)
    else:
        asked["tasks"] = layout.world_size  # one per node: --ntasks=<nodes> (it refuses tasks_per_node=1)
    if layout.gpus_per_task:
        asked["gres"] = f"gpu:{model}{layout.tasks_per_node}"  # per node, unlike --gpus
        asked["tasks_per_gpu"] = 0  # no --ntasks-per-gpu, which Slurm refuses next to --ntasks-per-node
    return asked


def in_allocation_outside_step(env: Mapping[str, str] | None = None) -> bool:
    """True in a Slurm batch script or the plugin's job (SLURM_JOB_ID set), not in an srun task (SLURM_STEP_ID)."""
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env and "SLURM_STEP_ID" not in env


def srun_command(layout: TaskLayout, command: Sequence[str]) -> list[str]:
    """`srun` starting `command` once per task of `layout`; one task's failure ends the others."""
    gpus = [f"--gpus-per-task={layout.gpus_per_task}"] if layout.gpus_per_task else []
    return [
        "srun", f"--nodes={layout.nodes}", f"--ntasks-per-node={layout.tasks_per_node}",
        f"--cpus-per-task={layout.cpus_per_task}", *gpus, "--kill-on-bad-exit=1", *command,
    ]  # fmt: skip
