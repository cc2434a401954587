"""A stage job's settings as a file: the workflow writes the part of its config that one job reads, and the job's
`depthcontrast` verb reads it back with `--settings` (validated against the schema), instead of taking it from
config.yaml (the workflow's config can also come from --configfile and --config) or a JSON string.

The file, results/settings/<stage>/<name>.yaml, is a piece of a config: the keys it holds sit where they sit in
config.yaml. It holds only what changes the job's result, so Snakemake, which reruns a job whose input is newer
than its output, reruns exactly the jobs an edit changes: a run's `export_targets` or Slurm `resources` rerun
no pretraining, its learning rate does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from depthcontrast.config import dotted, read_yaml_mapping, validate_settings
from depthcontrast.errors import ConfigError
from depthcontrast.io_utils import atomic_write_bytes
from depthcontrast.stages.pretrain import run_settings

log = logging.getLogger(__name__)
HEADER = (
    "# Written by the workflow (rule `settings`) from its config: what the {stage} job of {name!r} reads.\n"
    "# Snakemake reruns the job when this file changes.\n"
)


def download_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    return {"datasets": {dataset: {"source": config["datasets"][dataset]["source"]}}}


def preprocess_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The dataset's format and preprocess blocks, and its source (which a dataset block must have)."""
    entry = config["datasets"][dataset]
    return {"datasets": {dataset: {key: entry[key] for key in ("source", "format", "preprocess")}}}


def pretrain_settings(config: Mapping[str, Any], run: str) -> dict[str, Any]:
    return {"pretrain": {run: run_settings(config["pretrain"][run])}}


def evaluation_of_run(config: Mapping[str, Any], run: str | None) -> dict[str, Any]:
    """`evaluate`'s settings (seeds, points, protocols, linear, finetune) with the `evaluation:` overrides of
    pretraining run `run` on top (None or a run without them: `evaluate`'s as they are)."""
    shared = {key: value for key, value in config["evaluate"].items() if key != "tasks"}
    runs = config.get("pretrain", {})
    overrides = runs[run].get("evaluation", {}) if run in runs else {}
    for key, value in overrides.items():
        if key != "tasks":  # which tasks, not how: see architectures.evaluated_tasks
            shared[key] = {**shared[key], **value} if isinstance(value, Mapping) else value
    return shared


def evaluate_settings(config: Mapping[str, Any], item: str) -> dict[str, Any]:
    """For `item` "<run>/<task>": the evaluation settings of that run (evaluation_of_run) and the one task."""
    run, task = item.split("/")
    return {"evaluate": {**evaluation_of_run(config, run), "tasks": {task: config["evaluate"]["tasks"][task]}}}


def external_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {"external": {name: config["external"][name]}}


STAGE_SETTINGS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "download": download_settings,
    "preprocess": preprocess_settings,
    "pretrain": pretrain_settings,
    "evaluate": evaluate_settings,
    "external": external_settings,
}


def stage_settings(config: Mapping[str, Any], stage: str, name: str) -> dict[str, Any]:
    """What the `stage` job of `name` reads from the validated `config`, keys sorted at every level (a rule's
    params: Snakemake compares their repr, which is then independent of the key order in config.yaml)."""
    return json.loads(json.dumps(STAGE_SETTINGS[stage](config, name), sort_keys=True))


def write_settings(settings: Mapping[str, Any], path: str | Path, stage: str, name: str) -> None:
    """Write `settings` (stage_settings' result) to `path` atomically."""
    text = HEADER.format(stage=stage, name=name) + yaml.safe_dump(dict(settings), sort_keys=True)
    atomic_write_bytes(path, text.encode())
    log.info("wrote %s", path)


def read_settings(path: str | Path) -> dict[str, Any]:
    """A settings file, validated against the schema with defaults filled; errors in one line naming the file
    and the key."""
    return validate_settings(read_yaml_mapping(path, "settings file"), str(path))


def config_block(config: Mapping[str, Any], key: Sequence[str], source: str | Path) -> Any:
    """The block at `key` (e.g. ("datasets", "demo_indoor")) of a config or settings file; a ConfigError naming the
    file and what it has instead when it lacks it."""
    block: Any = config
    for depth, part in enumerate(key):
        if not isinstance(block, Mapping) or part not in block:
            where = dotted(tuple(key[:depth])) if depth else "the top level"
            known = ", ".join(sorted(block)) if isinstance(block, Mapping) else ""
            raise ConfigError(f"{source}: no {dotted(tuple(key[: depth + 1]))} ({where} has: {known or 'nothing'})")
        block = block[part]
    return block
