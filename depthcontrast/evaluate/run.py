"""One downstream task end to end: split, every protocol × init × seed, summary, metrics.json."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthcontrast.errors import ConfigError, DataError
from depthcontrast.evaluate.backbone import (
    CheckpointBackbone,
    backbone_from_checkpoint,
    device_label,
    evaluation_device,
)
from depthcontrast.evaluate.classification import run_classification
from depthcontrast.evaluate.metrics import NOISE_RULE, segmentation_scores, summarise
from depthcontrast.evaluate.protocols import Clouds, finetune, linear_probe, resample
from depthcontrast.evaluate.tasks import (
    IGNORE_LABEL,
    OBJECT_CLASSIFICATION,
    Split,
    TaskKind,
    load_samples,
    split_by_group,
    task_kind,
)
from depthcontrast.io_utils import atomic_path, atomic_write_json, sha256_file
from depthcontrast.specs import EvaluateSpec, EvaluateTask

log = logging.getLogger(__name__)

INITS = ("pretrained", "scratch")
TEST_SAMPLING_SEED = 0  # one resampling of the test clouds, shared by every protocol, init and seed
METRICS_FILE = "metrics.json"
FINETUNED_FILE = "finetuned.pth"  # the finetuned model of the first seed from the pretrained init


def _settings_record(settings: EvaluateSpec) -> dict[str, Any]:
    """metrics.json's `settings`: seeds, points, protocols and each run protocol's optimisation settings."""
    record: dict[str, Any] = {"seeds": list(settings.seeds), "points": settings.points,
                              "protocols": list(settings.protocols)}  # fmt: skip
    return record | {name: dataclasses.asdict(protocol) for name, protocol in settings.protocols.items()}


def _split_summary(split: Split, group_name: str) -> dict[str, Any]:
    return {
        "group": group_name,
        "train_groups": sorted(set(split.train.groups)),
        "test_groups": sorted(set(split.test.groups)),
        "train_samples": sorted(split.train.sample_ids),
        "test_samples": sorted(split.test.sample_ids),
    }


def _save_finetuned(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), **meta}, tmp)


def _one_run(
    task_name: str,
    kind: TaskKind,
    protocol: str,
    init: str,
    seed: int,
    settings: EvaluateSpec,
    backbone_of: CheckpointBackbone,
    split: Split,
    test: Clouds,
    out_dir: Path,
) -> dict[str, Any]:
    """Train and score one (protocol, init, seed); keeps the first seed's finetuned pretrained model."""
    device, num_classes, points = evaluation_device(), len(kind.classes), settings.points
    train_settings = settings.protocols[protocol]
    torch.manual_seed(seed)
    backbone = backbone_of.build(pretrained=init == "pretrained").to(device)
    if protocol == "linear":
        train = resample(split.train, points, np.random.default_rng(seed))
        confusion = linear_probe(backbone, train, test, num_classes, train_settings, seed, device)
    else:
        confusion, model = finetune(backbone, split.train, test, points, num_classes, train_settings, seed, device)
        if init == "pretrained" and seed == settings.seeds[0]:
            meta = {"task": task_name, "classes": list(kind.classes), "seed": seed, "init": init}
            _save_finetuned(out_dir / FINETUNED_FILE, model, meta)
    return segmentation_scores(confusion, kind.classes)


def run_evaluation(
    task_name: str,
    task_block: Mapping[str, Any],
    settings_block: Mapping[str, Any],
    shard_dir: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    train_shard_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate `checkpoint`'s point encoder on one task against a random init; write out_dir/metrics.json.

    With the task's `train_dataset`, its shards (`train_shard_dir`) train and `shard_dir`'s test groups test.

    task_block: a validated `evaluate.tasks.<name>` block ({dataset, kind, test_groups, xyz_scale}); settings_block:
    the validated `evaluate` block (seeds, points, protocols, linear, finetune); both parsed at once into their
    specs. Returns what metrics.json
    holds: per protocol, per init the per-seed scores and mean/std of miou and accuracy, and
    `pretrained_minus_scratch` with a `within_noise` flag (metrics.NOISE_RULE).
    """
    if task_block["kind"] == OBJECT_CLASSIFICATION:  # one class per object: frozen global features, a linear classifier
        return run_classification(task_name, task_block, settings_block, shard_dir, checkpoint, out_dir)
    started = time.monotonic()
    task, settings = EvaluateTask.from_block(task_block), EvaluateSpec.from_block(settings_block)
    shard_dir, checkpoint, out_dir = Path(shard_dir), Path(checkpoint), Path(out_dir)
    kind = task_kind(task.kind)
    backbone = backbone_from_checkpoint(checkpoint)
    spec = backbone.spec
    points, seeds = settings.points, list(settings.seeds)
    if points < spec.npoints[0]:
        raise ConfigError(
            f"evaluate.points ({points}) is below the checkpoint backbone's first SA level ({spec.npoints[0]} centres)"
        )
    train = None
    if task.train_dataset is not None:
        if train_shard_dir is None:
            raise ConfigError(f"evaluate.tasks.{task_name}: train_dataset {task.train_dataset} needs its shard folder")
        train = load_samples(Path(train_shard_dir), kind, task.xyz_scale, spec.features)
    split = split_by_group(
        load_samples(shard_dir, kind, task.xyz_scale, spec.features),
        list(task.test_groups),
        kind.group_name,
        source=f"evaluate.tasks.{task_name}",
        train=train,
    )
    test = resample(split.test, points, np.random.default_rng(TEST_SAMPLING_SEED))
    for side, labelled in (("train", split.train.labels), ("test", [test.labels])):
        if not any((labels != IGNORE_LABEL).any() for labels in labelled):
            raise DataError(f"{shard_dir}: the {side} {kind.group_name}s of task {task_name} hold no scorable label")
    log.info(
        "%s: %d train / %d test samples (test %ss %s), %d points each, seeds %s",
        task_name,
        len(split.train),
        len(split.test),
        kind.group_name,
        sorted(set(split.test.groups)),
        points,
        seeds,
    )
    results: dict[str, Any] = {}
    for protocol in settings.protocols:
        protocol_started = time.monotonic()
        runs: dict[str, dict[str, Any]] = {init: {} for init in INITS}
        for init in INITS:
            for seed in seeds:
                run_started = time.monotonic()
                scores = _one_run(task_name, kind, protocol, init, seed, settings, backbone, split, test, out_dir)
                runs[init][str(seed)] = scores
                log.info(
                    f"{task_name} {protocol} {init} seed {seed}: mIoU {scores['miou']:.4f} "
                    f"accuracy {scores['accuracy']:.4f} ({time.monotonic() - run_started:.1f} s)"
                )
        results[protocol] = summarise(runs) | {"seconds": round(time.monotonic() - protocol_started, 1)}
        for metric, diff in results[protocol]["pretrained_minus_scratch"].items():
            noise = "within" if diff["within_noise"] else "beyond"
            log.info(
                f"{task_name} {protocol}: {metric} pretrained - scratch = {diff['difference']:+.4f} "
                f"({noise} the seed noise {diff['noise']:.4f})"
            )
    metrics = {
        "task": task_name,
        "kind": task.kind,
        "dataset": task.dataset,
        **({"train_dataset": task.train_dataset} if task.train_dataset else {}),
        "xyz_scale": task.xyz_scale,
        "classes": list(kind.classes),
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "backbone": {
            "name": spec.name,
            "scale": backbone.scale,
            "npoints": list(spec.npoints),
            "features": list(spec.features.names),
            "features_read_as_zeros": split.train.zero_features,
        },
        "split": _split_summary(split, kind.group_name),
        "settings": _settings_record(settings),
        "noise_rule": NOISE_RULE,
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
        "device": device_label(evaluation_device()),
    }
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    return metrics
