"""A run's `resources:` block through the installed snakemake-executor-plugin-slurm: the sbatch arguments it
builds, the plugin's own srun step, and the rule's srun for multi-task runs. Multi-node layouts cannot run on the
one-node test cluster (tests/test_slurm.py), so their arguments are checked here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

from depthcontrast.config import validate_config
from depthcontrast.errors import ConfigError
from depthcontrast.launch import world_from_environment
from depthcontrast.slurm import TaskLayout, in_allocation_outside_step, job_resources, srun_command

PLUGIN_PARAMS = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "",
                 "workdir": "/w"}  # fmt: skip
PLUGIN_SETTINGS = SimpleNamespace(requeue=True, no_requeue=False, qos=None, reservation=None)


class Resources(dict):
    """Snakemake's job resources as the plugin reads them: `.get(name)` and `.name`."""

    __getattr__ = dict.__getitem__


def run_resources(**block) -> dict:
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "indoor"}}},
              "pretrain": {"r": {"datasets": ["d"], "resources": block}}}  # fmt: skip
    return validate_config(config)["pretrain"]["r"]["resources"]


def plugin_job(resources: dict) -> SimpleNamespace:
    """A job as the plugin sees it, with the pretrain rule's resources (None: not set, as Snakemake drops it)."""
    asked = {name: value for name, value in job_resources(resources).items() if value is not None}
    return SimpleNamespace(resources=Resources(asked), threads=resources["cpus_per_task"])


def sbatch_flags(resources: dict) -> list[str]:
    job = plugin_job(resources)
    return (get_submit_command(job, PLUGIN_PARAMS, PLUGIN_SETTINGS) + set_gres_string(job)).split()


def test_one_cpu_task_by_default_with_the_time_limit_signal():
    flags = sbatch_flags(run_resources())
    for flag in ("--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--requeue", "--signal=TERM@300"):
        assert flag in flags
    assert flags[flags.index("--mem") + 1] == "8000" and flags[flags.index("-t") + 1] == "1440"
    assert not [flag for flag in flags if "gpu" in flag or "gres" in flag]
    assert "mpi" not in job_resources(run_resources())  # the plugin starts the rule in its own `srun -n1` step


def test_one_gpu_task_asks_for_one_gpu_of_the_model_in_sbatch_and_the_plugins_step():
    resources = run_resources(gpu=True, gpu_model="a100", cpus_per_task=8, mem_mb=64000, runtime=2880)
    flags = sbatch_flags(resources)
    for flag in ("--gpus=a100:1", "--nodes=1", "--cpus-per-task=8", "--signal=TERM@300"):
        assert flag in flags
    assert not [flag for flag in flags if flag.startswith(("--ntasks", "--gres"))]
    job = plugin_job(resources)
    assert (get_gpu_setting(job), get_node_setting(job), get_cpu_setting(job, True)) == (
        "--gpus=1", "--nodes=1", "--cpus-per-task=8"
    )  # fmt: skip


def test_two_nodes_of_four_gpus_get_four_tasks_and_gpus_per_node_and_srun_one_gpu_per_task():
    resources = run_resources(nodes=2, tasks_per_node=4, gpu=True, gpu_model="h100", cpus_per_task=8)
    flags = sbatch_flags(resources)
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gres=gpu:h100:4", "--cpus-per-task=8"):
        assert flag in flags
    assert not [flag for flag in flags if flag.startswith(("--ntasks-per-gpu", "--gpus", "--ntasks="))]
    assert job_resources(resources)["mpi"] == "srun"  # the plugin runs the rule outside any step; it calls srun
    assert srun_command(TaskLayout.of_run(resources), ["train"]) == [
        "srun", "--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=8", "--gpus-per-task=1", "--kill-on-bad-exit=1",
        "train",
    ]  # fmt: skip


def test_one_task_on_each_of_three_nodes_asks_for_three_tasks():
    flags = sbatch_flags(run_resources(nodes=3, tasks_per_node=1))
    assert "--nodes=3" in flags and "--ntasks=3" in flags
    assert not [flag for flag in flags if flag.startswith("--ntasks-per-node")]


def test_a_time_limit_signal_not_before_the_time_limit_is_a_config_error():
    with pytest.raises(ConfigError, match=r"pretrain.r.resources: signal_before_limit_s \(300\) must be shorter"):
        run_resources(runtime=5)


@pytest.mark.parametrize(
    ("env", "outside_step"),
    [
        ({}, False),  # not in Slurm
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, True),  # a batch script
        ({"SLURM_JOB_ID": "7"}, True),  # the plugin's job: it drops every other SLURM_ variable
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3"}, False),  # an srun task
    ],
)
def test_only_a_process_in_an_allocation_but_outside_srun_starts_the_tasks(env: dict, outside_step: bool):
    assert in_allocation_outside_step(env) is outside_step


def test_the_tasks_of_a_two_node_job_get_global_ranks_and_the_first_node_as_rendezvous():
    job = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu3,gpu4"}
    worlds = [
        world_from_environment({**job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 4)}) for rank in range(8)
    ]
    assert [(w.rank, w.local_rank, w.world_size) for w in worlds] == [(r, r % 4, 8) for r in range(8)]
    assert {w.init_method for w in worlds} == {"tcp://gpu3:24242"}


def test_the_resources_spec_has_exactly_the_schemas_resources_keys():
    from depthcontrast.config import load_schema
    from depthcontrast.slurm import ResourcesSpec

    assert set(ResourcesSpec.__dataclass_fields__) == set(load_schema()["$defs"]["run_resources"]["properties"])
