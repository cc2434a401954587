# Input functions, wildcard constraints and shared settings.
import json
import os
import re
import shlex


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


def shell_quoted_json(value):
    """A config block as one shell word (the rule passes validated settings, not a file path)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def names_pattern(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


wildcard_constraints:
    dataset=names_pattern(config["datasets"]),
    run=names_pattern(config["pretrain"]),
