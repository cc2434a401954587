"""Segmentation metrics (confusion matrix, IoU, accuracy) and the seed summary pretrained vs scratch.

mIoU is the mean IoU over the classes that occur in the ground truth of the scored points; a class
with no ground-truth point is left out (its false positives still lower the other classes' IoU).
Points labelled IGNORE_LABEL are not scored.

Noise rule: a difference pretrained − scratch is `within_noise` when its absolute value is at most
the larger of the two sample standard deviations (ddof=1) over seeds; with a single seed the spread is
unknown and every difference counts as within noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from depthcontrast.evaluate.tasks import IGNORE_LABEL

METRIC_NAMES = ("miou", "accuracy")
NOISE_RULE = "|pretrained - scratch| <= max(std_pretrained, std_scratch), std over seeds with ddof=1; one seed: always"


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts, rows = ground truth, columns = prediction; IGNORE_LABEL points are skipped."""
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"{truth.size} labels but {predicted.size} predictions")
    scored = truth != IGNORE_LABEL
    pairs = truth[scored].astype(np.int64) * num_classes + predicted[scored].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """miou, accuracy (overall), per_class_iou (None for classes absent from the ground truth), points."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    in_truth = confusion.sum(axis=1)
    union = in_truth + confusion.sum(axis=0) - true_positive
    total = confusion.sum()
    present = in_truth > 0
    iou = np.where(present, true_positive / np.maximum(union, 1), np.nan)
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou, strict=True)},
        "points": int(total),
    }


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std}


def compare(pretrained: Mapping[str, float], scratch: Mapping[str, float], seeds: int) -> dict[str, Any]:
    """Difference of means pretrained − scratch, and whether it is within the seed noise (NOISE_RULE)."""
    difference = pretrained["mean"] - scratch["mean"]
    noise = max(pretrained["std"], scratch["std"])
    within = seeds < 2 or abs(difference) <= noise or math.isnan(difference)
    return {"difference": difference, "noise": noise, "within_noise": bool(within)}


def summarise(per_seed: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """{init: {seed: scores}} of one protocol → per-seed scores, mean/std per init, difference per metric."""
    out: dict[str, Any] = {}
    for init, runs in per_seed.items():
        out[init] = {"per_seed": dict(runs)}
        for metric in METRIC_NAMES:
            out[init][metric] = mean_std([scores[metric] for scores in runs.values()])
    if "pretrained" in out and "scratch" in out:
        seeds = len(per_seed["pretrained"])
        out["pretrained_minus_scratch"] = {
            metric: compare(out["pretrained"][metric], out["scratch"][metric], seeds) for metric in METRIC_NAMES
        }
    return out
