# Input functions and wildcard constraints.
import re
import sys

from depthcontrast.architectures import KNOWN_TARGETS, evaluated_tasks
from depthcontrast.containers.images import ContainerError
from depthcontrast.containers.workflow import RuleContainers
from depthcontrast.slurm import JOB_RESOURCES, job_resources
from depthcontrast.stages.settings import STAGE_SETTINGS, stage_settings


try:  # docker/containers.yaml + docker/images.lock.json: which image each rule's `container:` names
    CONTAINERS = RuleContainers()
except ContainerError as error:
    sys.exit(f"depthcontrast: error: {error}")


def cpu_container():
    """The CPU rules' image (used only with --software-deployment-method apptainer)."""
    return CONTAINERS.cpu()


def pretrain_container(wildcards):
    """The pretrain rule's image: its run's sparse-conv stack (spconv or minkowski) in the configured flavour."""
    return CONTAINERS.pretrain(config["pretrain"][wildcards.run])


def enabled_datasets():
    """Names of the datasets that `rule all` builds."""
    return sorted(name for name, entry in config["datasets"].items() if entry["enabled"])


def shard_indexes():
    return expand("results/shards/{dataset}/index.json", dataset=enabled_datasets())


def enabled_runs():
    """Names of the pretraining runs that `rule all` builds."""
    return sorted(name for name, entry in config["pretrain"].items() if entry["enabled"])


def pretrain_shard_indexes(wildcards):
    return expand("results/shards/{dataset}/index.json", dataset=config["pretrain"][wildcards.run]["datasets"])


def pretrain_outputs():
    return expand("results/pretrain/{run}/last.pth", run=enabled_runs())


def pretrain_job_resources():
    """The pretrain job's resources, each a function of the run (None: not asked for); see depthcontrast.slurm."""

    def resource(name):
        return lambda wildcards: job_resources(config["pretrain"][wildcards.run]["resources"]).get(name)

    return {name: resource(name) for name in JOB_RESOURCES}


def export_outputs():
    return [
        f"results/export/{run}/{target}.json"
        for run in enabled_runs()
        for target in config["pretrain"][run]["export_targets"]
    ]


def names_pattern(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


def evaluations():
    """`run/task` of the built-in evaluation of every enabled run that trains a point encoder (voxel-only runs get
    none)."""
    return [f"{run}/{task}" for run, tasks in evaluated_tasks(config).items() for task in tasks]


def finetune_outputs():
    return [f"results/finetune/{evaluation}/metrics.json" for evaluation in evaluations()]


def train_shards_of(wildcards):
    """The shards of the task's train_dataset (none: its dataset's other groups train)."""
    name = config["evaluate"]["tasks"][wildcards.task].get("train_dataset")
    return [f"results/shards/{name}/index.json"] if name else []


def evaluation_gpu(wildcards):
    """1 when the evaluated run trains on a GPU (its `resources.gpu`), else not asked for."""
    return 1 if config["pretrain"][wildcards.run]["resources"]["gpu"] else None


def job_settings(wildcards):
    """What the settings file results/settings/{stage}/{item}.yaml holds (see depthcontrast.stages.settings)."""
    return stage_settings(config, wildcards.stage, wildcards.item)


def external_weights(name):
    job = config["external"][name]
    return f"results/export/{job['run']}/{job['target']}.pth"


def external_outputs():
    return expand(
        "results/finetune/external/{name}/done.json",
        name=sorted(name for name, job in config["external"].items() if job["enabled"]),
    )


def summary_outputs():
    return ["results/summary.md"] if enabled_runs() else []


def downstream_plots():
    return ["results/report/downstream.png"] if config["evaluate"]["tasks"] else []


wildcard_constraints:
    dataset=names_pattern(config["datasets"]),
    run=names_pattern(config["pretrain"]),
    target=names_pattern(KNOWN_TARGETS),
    stage=names_pattern(STAGE_SETTINGS),
    item="[A-Za-z0-9][A-Za-z0-9_-]*(/[A-Za-z0-9][A-Za-z0-9_-]*)?",  # a dataset, run, external job, or run/task
    task=names_pattern(config["evaluate"]["tasks"]),
    name=names_pattern(config["external"]),
