"""Object classification with a frozen backbone: global max-pooled features and a linear classifier.

The linear-classifier protocol of the point-cloud self-supervised literature (ModelNet40 with a linear SVM), on the
objects of a `kicad` dataset (one class per object: its library, docs/CLASSIFICATION.md):

1. classes: those named in the task, else every class with at least `min_models` models and two variant groups
   (a class of one group cannot be split); at most `max_models` models per class (a seeded subset).
2. split: per class, its variant groups in a seeded order go to test while they fit within `test_fraction` of its
   models (a group that would overshoot is passed over; if none fits, the smallest goes), at least one group on
   each side: a group, the sizes/pitches/pin counts of one package, is never on both sides.
3. per init (pretrained, scratch) and seed: the backbone's BatchNorm statistics are estimated on the training
   clouds (protocols.estimate_bn_statistics, as the segmentation probe does: both inits normalised by the same
   clouds' statistics, docs/PROBE_DIAGNOSIS.md), then the frozen backbone (eval mode) encodes each object's
   `evaluate.points` points (train: a resampling seeded by the seed; test: one resampling shared by all); the
   global feature is the max over its fp2 points of their features; features are standardised with the
   training mean and std.
4. a multinomial logistic regression (softmax + L2 `l2` |W|², no penalty on the bias) fitted full batch by
   L-BFGS for `iterations` iterations from zero weights. Chosen over a linear SVM: scikit-learn is not a
   dependency, the loss is convex (the fit depends on the features only, not on an optimiser seed), and it is a
   few lines of torch. Scores: overall accuracy and the mean of the per-class accuracies (recall).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from depthcontrast.data.shards import read_index
from depthcontrast.data.sources.kicad import model_class, variant_group
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.evaluate.backbone import backbone_from_checkpoint, device_label, evaluation_device
from depthcontrast.evaluate.metrics import NOISE_RULE, compare, confusion_matrix, mean_std
from depthcontrast.evaluate.protocols import STANDARDISE_EPS, backbone_features, estimate_bn_statistics, resample
from depthcontrast.evaluate.tasks import OBJECT_CLASSIFICATION, Samples, Split, TaskKind, load_samples
from depthcontrast.io_utils import atomic_write_json, sha256_file
from depthcontrast.log import progress
from depthcontrast.specs import EvaluateSpec

log = logging.getLogger(__name__)

PROTOCOL = "linear_global"
INITS = ("pretrained", "scratch")
METRIC_NAMES = ("accuracy", "mean_class_accuracy")
HEADLINE = "mean_class_accuracy"
TEST_SAMPLING_SEED = 0  # = run.TEST_SAMPLING_SEED: one resampling of the test objects for every init and seed
METRICS_FILE = "metrics.json"
GROUP_NAME = "variant group"


@dataclass(frozen=True)
class ClassificationTask:
    """An `evaluate.tasks.<name>` block of kind object_classification."""

    dataset: str
    xyz_scale: float
    min_models: int
    max_models: int | None
    classes: tuple[str, ...] | None
    test_fraction: float
    split_seed: int
    l2: float
    iterations: int
    batch_size: int

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> ClassificationTask:
        names = block["classes"]
        return cls(block["dataset"], block["xyz_scale"], block["min_models"], block["max_models"],
                   None if names is None else tuple(names), block["test_fraction"], block["split_seed"], block["l2"],
                   block["iterations"], block["batch_size"])  # fmt: skip


def object_class(sample_id: str) -> str:
    """`kicad/Connector_PinHeader_2.54mm/PinHeader_1x05_P2.54mm_Vertical` → `Connector_PinHeader`."""
    parts = sample_id.split("/")
    if len(parts) < 2:
        raise DataError(f"sample {sample_id!r}: not <dataset>/<library>/<model>; cannot tell its class")
    return model_class(parts[-2])


def object_group(sample_id: str) -> str:
    """The variant group of an object, prefixed by its class: `Capacitor_SMD/C` (data/sources/kicad.py's rule)."""
    return f"{object_class(sample_id)}/{variant_group(sample_id.rsplit('/', 1)[-1])}"


OBJECTS = TaskKind((), lambda labels: labels, object_group, GROUP_NAME)  # labels unused: the class is the library


def _subset(samples: Samples, keep: Sequence[int]) -> Samples:
    return Samples([samples.points[i] for i in keep], [samples.labels[i] for i in keep],
                   [samples.sample_ids[i] for i in keep], [samples.groups[i] for i in keep],
                   samples.zero_features)  # fmt: skip


def choose_classes(samples: Samples, task: ClassificationTask, source: str) -> list[str]:
    """The task's classes, sorted: its `classes`, else those with min_models models in two or more groups."""
    models = Counter(object_class(i) for i in samples.sample_ids)
    groups: dict[str, set[str]] = {}
    for sample_id, group in zip(samples.sample_ids, samples.groups, strict=True):
        groups.setdefault(object_class(sample_id), set()).add(group)
    if task.classes is not None:
        missing = sorted(set(task.classes) - set(models))
        if missing:
            raise DataError(f"{source}: classes {missing} not in the data (classes: {', '.join(sorted(models))})")
        single = sorted(name for name in task.classes if len(groups[name]) < 2)
        if single:
            raise DataError(f"{source}: classes {single} have one {GROUP_NAME} each; a split needs two")
        return sorted(task.classes)
    kept = sorted(name for name, count in models.items() if count >= task.min_models and len(groups[name]) >= 2)
    if len(kept) < 2:
        raise DataError(
            f"{source}: {len(kept)} classes have {task.min_models}+ models in 2+ {GROUP_NAME}s; a classifier needs "
            f"two (lower min_models; classes by models: {dict(models.most_common(5))})"
        )
    return kept


def held_out_groups(sizes: Mapping[str, int], target: float, rng: np.random.Generator) -> set[str]:
    """The test groups of one class (group → models): in a seeded order, each group that still fits within
    `target` models; if none fits, the smallest (first by name on a tie). Never every group."""
    names = sorted(sizes)
    held: set[str] = set()
    total = 0
    for group in (names[k] for k in rng.permutation(len(names))):
        if total + sizes[group] <= target and len(held) < len(names) - 1:
            held.add(group)
            total += sizes[group]
    if not held and len(names) > 1:
        held.add(min(names, key=lambda name: (sizes[name], name)))
    return held


def split_objects(samples: Samples, classes: Sequence[str], task: ClassificationTask) -> Split:
    """The objects of `classes` (max_models each), whole variant groups to test per class (module docstring)."""
    train, test = [], []
    for index, name in enumerate(classes):
        rng = np.random.default_rng([task.split_seed, index])
        members = [i for i, sample_id in enumerate(samples.sample_ids) if object_class(sample_id) == name]
        if task.max_models is not None and len(members) > task.max_models:
            members = sorted(rng.choice(members, task.max_models, replace=False).tolist())
        sizes = Counter(samples.groups[i] for i in members)
        held = held_out_groups(sizes, task.test_fraction * len(members), rng)
        test += [i for i in members if samples.groups[i] in held]
        train += [i for i in members if samples.groups[i] not in held]
    split = Split(_subset(samples, sorted(train)), _subset(samples, sorted(test)))
    split.check_disjoint(GROUP_NAME)
    return split


def global_features(
    backbone: torch.nn.Module, xyz: np.ndarray, batch_size: int, device: torch.device, desc: str = "encode"
) -> torch.Tensor:
    """Frozen global features [N, C]: the max over each cloud's fp2 points of their features."""
    starts = range(0, len(xyz), batch_size)
    pooled = [
        backbone_features(backbone, xyz[start : start + batch_size], batch_size, device)[0].amax(dim=2)
        for start in progress(starts, desc=desc, total=len(starts), unit="batch")
    ]
    return torch.cat(pooled)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, iterations: int) -> torch.nn.Linear:
    """Multinomial logistic regression on rows x [N, C] (float64), labels y [N]: mean cross-entropy + l2 |W|²,
    full-batch L-BFGS (strong Wolfe line search) from zero weights."""
    classifier = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(
        classifier.parameters(), lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(classifier(x), y) + l2 * classifier.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def classification_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """accuracy (overall), mean_class_accuracy (mean recall over classes with test objects), per_class_accuracy."""
    confusion = np.asarray(confusion, dtype=np.float64)
    in_truth = confusion.sum(axis=1)
    recall = np.where(in_truth > 0, np.diag(confusion) / np.maximum(in_truth, 1), np.nan)
    total = confusion.sum()
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "mean_class_accuracy": float(np.nanmean(recall)) if (in_truth > 0).any() else float("nan"),
        "per_class_accuracy": {
            name: (None if np.isnan(value) else float(value)) for name, value in zip(class_names, recall, strict=True)
        },
        "objects": int(total),
    }


def linear_global(
    backbone: torch.nn.Module,
    train_xyz: np.ndarray,
    train_y: np.ndarray,
    test_xyz: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    task: ClassificationTask,
    device: torch.device,
    desc: str = "encode",
) -> np.ndarray:
    """The protocol for one backbone: BatchNorm statistics of the training clouds, frozen global features,
    standardised, a linear classifier; the test confusion matrix. The backbone's BatchNorm statistics change."""
    estimate_bn_statistics(backbone, train_xyz, task.batch_size, device)
    train_x = global_features(backbone, train_xyz, task.batch_size, device, f"{desc} train").double()
    test_x = global_features(backbone, test_xyz, task.batch_size, device, f"{desc} test").double()
    mean, std = train_x.mean(dim=0), train_x.std(dim=0) + STANDARDISE_EPS
    classifier = fit_linear((train_x - mean) / std, torch.from_numpy(train_y), num_classes, task.l2, task.iterations)
    with torch.no_grad():
        predicted = classifier((test_x - mean) / std).argmax(dim=1).numpy()
    return confusion_matrix(test_y, predicted, num_classes)


def _summary(runs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for init, per_seed in runs.items():
        out[init] = {"per_seed": dict(per_seed)} | {
            metric: mean_std([scores[metric] for scores in per_seed.values()]) for metric in METRIC_NAMES
        }
    seeds = len(runs["pretrained"])
    out["pretrained_minus_scratch"] = {
        metric: compare(out["pretrained"][metric], out["scratch"][metric], seeds) for metric in METRIC_NAMES
    }
    return out


def _split_record(split: Split, classes: Sequence[str]) -> dict[str, Any]:
    per_class = {
        name: {side: sum(object_class(i) == name for i in part.sample_ids) for side, part in
               (("train", split.train), ("test", split.test))} for name in classes
    }  # fmt: skip
    return {
        "group": GROUP_NAME,
        "per_class": per_class,
        "train_groups": sorted(set(split.train.groups)),
        "test_groups": sorted(set(split.test.groups)),
        "train_samples": sorted(split.train.sample_ids),
        "test_samples": sorted(split.test.sample_ids),
    }


def run_classification(
    task_name: str,
    task_block: Mapping[str, Any],
    settings_block: Mapping[str, Any],
    shard_dir: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Score `checkpoint`'s frozen point encoder against a random init on object classification; out_dir/metrics.json.

    task_block: a validated `evaluate.tasks.<name>` block of kind object_classification; settings_block: the
    validated `evaluate` block (its seeds and points are used). metrics.json: per init the per-seed scores and
    mean/std of accuracy and mean_class_accuracy, and `pretrained_minus_scratch` with `within_noise` (NOISE_RULE).
    """
    started = time.monotonic()
    task, settings = ClassificationTask.from_block(task_block), EvaluateSpec.from_block(settings_block)
    shard_dir, checkpoint, out_dir = Path(shard_dir), Path(checkpoint), Path(out_dir)
    source = f"evaluate.tasks.{task_name}"
    backbone_of = backbone_from_checkpoint(checkpoint)
    spec = backbone_of.spec
    if settings.points < spec.npoints[0]:
        raise ConfigError(f"evaluate.points ({settings.points}) is below the checkpoint backbone's first SA level "
                          f"({spec.npoints[0]} centres)")  # fmt: skip
    index = read_index(shard_dir)
    if index.source != "kicad":
        raise DataError(f"{shard_dir}: shards of source kind {index.source!r}; {source} (object_classification) "
                        f"reads a kicad dataset's, one object per sample")  # fmt: skip
    samples = load_samples(shard_dir, OBJECTS, task.xyz_scale, spec.features)
    classes = choose_classes(samples, task, f"{shard_dir}: {source}")
    split = split_objects(samples, classes, task)
    label_of = {name: index for index, name in enumerate(classes)}
    train_y = np.array([label_of[object_class(i)] for i in split.train.sample_ids], dtype=np.int64)
    test_y = np.array([label_of[object_class(i)] for i in split.test.sample_ids], dtype=np.int64)
    test_xyz = resample(split.test, settings.points, np.random.default_rng(TEST_SAMPLING_SEED)).xyz
    device = evaluation_device()
    log.info("%s: %d classes, %d train / %d test objects in %d / %d %ss, %d points each, seeds %s", task_name,
             len(classes), len(split.train), len(split.test), len(set(split.train.groups)),
             len(set(split.test.groups)), GROUP_NAME, settings.points, list(settings.seeds))  # fmt: skip
    runs_started = time.monotonic()
    runs: dict[str, dict[str, Any]] = {init: {} for init in INITS}
    for init in INITS:
        for seed in settings.seeds:
            run_started = time.monotonic()
            torch.manual_seed(seed)
            backbone = backbone_of.build(pretrained=init == "pretrained").to(device)
            train_xyz = resample(split.train, settings.points, np.random.default_rng(seed)).xyz
            desc = f"{task_name} {init} seed {seed}"
            confusion = linear_global(backbone, train_xyz, train_y, test_xyz, test_y, len(classes), task, device, desc)
            scores = classification_scores(confusion, classes) | {"confusion": confusion.tolist()}
            runs[init][str(seed)] = scores
            log.info(
                f"{task_name} {PROTOCOL} {init} seed {seed}: accuracy {scores['accuracy']:.4f} mean class accuracy "
                f"{scores['mean_class_accuracy']:.4f} ({time.monotonic() - run_started:.1f} s)"
            )
    result = _summary(runs) | {"seconds": round(time.monotonic() - runs_started, 1)}
    for metric, diff in result["pretrained_minus_scratch"].items():
        noise = "within" if diff["within_noise"] else "beyond"
        log.info(f"{task_name} {PROTOCOL}: {metric} pretrained - scratch = {diff['difference']:+.4f} "
                 f"({noise} the seed noise {diff['noise']:.4f})")  # fmt: skip
    metrics = {
        "task": task_name,
        "kind": OBJECT_CLASSIFICATION,
        "dataset": task.dataset,
        "headline": HEADLINE,
        "classes": classes,
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "backbone": {"name": spec.name, "scale": backbone_of.scale, "npoints": list(spec.npoints),
                     "features": list(spec.features.names), "features_read_as_zeros": samples.zero_features},
        "split": _split_record(split, classes),
        "settings": {"seeds": list(settings.seeds), "points": settings.points, "protocols": [PROTOCOL],
                     PROTOCOL: {k: v for k, v in asdict(task).items() if k != "dataset"}},
        "noise_rule": NOISE_RULE,
        "results": {PROTOCOL: result},
        "seconds": round(time.monotonic() - started, 1),
        "device": device_label(device),
    }  # fmt: skip
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    return metrics
