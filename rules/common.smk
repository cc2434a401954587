# Input functions, wildcard constraints and shared settings.
import re


def enabled_datasets():
    """Names of the datasets that `rule all` builds."""
    return sorted(name for name, entry in config["datasets"].items() if entry["enabled"])


def dataset_entry(wildcards):
    return config["datasets"][wildcards.dataset]


def shard_indexes():
    return expand("results/shards/{dataset}/index.json", dataset=enabled_datasets())


wildcard_constraints:
    dataset="|".join(re.escape(name) for name in sorted(config["datasets"])),
