"""Where this process sits in a distributed run: torchrun, Slurm's srun, or the original DepthContrast code's flags.

Three ways to start N processes, one rule for rank/world:
- torchrun / torch.distributed.run: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set.
- srun (one task per GPU): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST in a job step
  (SLURM_STEP_ID; a batch script has SLURM_PROCID=0 too, but is one process); the first node of the
  allocation is the rendezvous host, the port is derived from the job id.
- the original's `--multiprocessing-distributed --world-size NODES --rank NODE --ngpus G --dist-url URL`:
  this process spawns G workers; global rank = NODE * G + local, world = NODES * G.
Otherwise: a single process (world size 1, no process group).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from depthcontrast.errors import ConfigError

SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class WorldInfo:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.init_method is not None


def _first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`node[01-04]` → `node01`), via scontrol when compressed."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol: {exc}") from None
    return hosts[0]


def world_from_environment(env: dict[str, str] | None = None) -> WorldInfo:
    """Rank and rendezvous from torchrun's or Slurm's environment; single process if neither."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        init = "env://" if world > 1 else None
        return WorldInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), init)
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        host = _first_slurm_host(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
        port = env.get("MASTER_PORT") or str(SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % SLURM_PORT_SPAN)
        return WorldInfo(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            f"tcp://{host}:{port}",
        )
    return WorldInfo(0, 1, 0, None)


def world_from_original_flags(
    node_rank: int, num_nodes: int, gpus_per_node: int, local: int, dist_url: str
) -> WorldInfo:
    """The original's convention: `--world-size` counts nodes, `--rank` is the node, `--ngpus` per node."""
    if num_nodes < 1 or node_rank < 0 or node_rank >= num_nodes:
        raise ConfigError(f"--rank {node_rank} must be in [0, --world-size {num_nodes})")
    return WorldInfo(node_rank * gpus_per_node + local, num_nodes * gpus_per_node, local, dist_url)


def device_for(world: WorldInfo, requested: str = "auto") -> torch.device:
    """cuda:<local_rank> when CUDA is available (and not refused), else cpu. A task that sees one GPU only
    (srun --gpus-per-task=1 binds one to each task) takes that one."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA GPU")
    index = world.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(world: WorldInfo, device: torch.device) -> None:
    """NCCL on GPU, gloo on CPU; nothing for a single process."""
    if not world.distributed:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, init_method=world.init_method, rank=world.rank, world_size=world.world_size, **kwargs
    )


def destroy_process_group(world: WorldInfo) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
