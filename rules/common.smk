# Input functions, wildcard constraints and shared settings.
import json
import os
import re
import shlex

from depthcontrast.architectures import evaluated_tasks
from depthcontrast.slurm import JOB_RESOURCES, job_resources


def enabled_datasets():
    """Names of the datasets that `rule all` builds."""
    return sorted(name for name, entry in config["datasets"].items() if entry["enabled"])


def dataset_entry(wildcards):
    return config["datasets"][wildcards.dataset]


def shard_indexes():
    return expand("results/shards/{dataset}/index.json", dataset=enabled_datasets())


def enabled_runs():
    """Names of the pretraining runs that `rule all` builds."""
    return sorted(name for name, entry in config["pretrain"].items() if entry["enabled"])


def pretrain_shard_indexes(wildcards):
    return expand("results/shards/{dataset}/index.json", dataset=config["pretrain"][wildcards.run]["datasets"])


def pretrain_outputs():
    return expand("results/pretrain/{run}/last.pth", run=enabled_runs())


# settings of a run that do not change its training (so editing them reruns nothing upstream of them)
NOT_TRAINING_SETTINGS = ("enabled", "export_targets", "resources")


def training_settings(wildcards):
    run = config["pretrain"][wildcards.run]
    return {key: value for key, value in run.items() if key not in NOT_TRAINING_SETTINGS}


def task_layout(wildcards):
    """The run's number of processes: a rerun trigger (the global batch is batch_size x tasks)."""
    resources = config["pretrain"][wildcards.run]["resources"]
    return f"--nodes {resources['nodes']} --tasks-per-node {resources['tasks_per_node']}"


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


def shell_quoted_json(value):
    """A config block as one shell word (the rule passes validated settings, not a file path)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def names_pattern(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


def finetune_outputs():
    """The built-in evaluation of every enabled run that trains a point encoder (voxel-only runs get none)."""
    return [
        f"results/finetune/{run}/{task}/metrics.json"
        for run, tasks in evaluated_tasks(config).items()
        for task in tasks
    ]


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
    target="votenet|h3dnet|plain|minkunet_seg|openpcdet",
    task=names_pattern(config["evaluate"]["tasks"]),
    name=names_pattern(config["external"]),
