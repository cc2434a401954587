"""Generic per-sample checks and subsampling, applied to every sample whatever its format."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from depthcontrast.data.records import Sample

XYZ_ROW_BYTES = 3 * np.dtype(np.float32).itemsize
# the distinct-point check first counts an evenly strided subset this many times the threshold: distinct
# points of a subset are distinct points of the scan, so a normal scan is cleared without sorting all of it
DISTINCT_PROBE_FACTOR = 8


@dataclass(frozen=True)
class SampleLimits:
    """What a sample must satisfy to be kept (the `preprocess` block's thresholds)."""

    min_points: int
    min_distinct_points: int
    min_extent_m: float
    max_abs_coordinate_m: float

    @classmethod
    def of_preprocess(cls, params: dict[str, Any]) -> SampleLimits:
        """From a validated `preprocess` config block."""
        return cls(
            params["min_points"], params["min_distinct_points"], params["min_extent_m"], params["max_abs_coordinate_m"]
        )


def distinct_points(points: np.ndarray) -> int:
    """How many different xyz rows a float32 [P, 3] array has."""
    rows = np.ascontiguousarray(points, dtype=np.float32).view(np.dtype((np.void, XYZ_ROW_BYTES)))
    return int(np.unique(rows.ravel()).size)


def has_distinct_points(points: np.ndarray, at_least: int) -> tuple[bool, int]:
    """(whether `points` has `at_least` distinct rows, the count that decided it)."""
    stride = max(1, len(points) // (DISTINCT_PROBE_FACTOR * at_least))
    if stride > 1:
        probed = distinct_points(points[::stride])
        if probed >= at_least:
            return True, probed
    count = distinct_points(points)
    return count >= at_least, count


def rejection_reason(sample: Sample, limits: SampleLimits) -> tuple[str, str] | None:
    """(reason, detail) if the sample must be quarantined, else None. Reasons as errors.QUARANTINE_REASONS."""
    points = sample.points
    if points.ndim != 2 or points.shape[1] != 3 or not np.issubdtype(points.dtype, np.floating):
        return "wrong_dtype", f"points are {points.dtype} {points.shape}, expected float [P, 3]"
    if points.shape[0] == 0:
        return "empty", "no points"
    low, high = points.min(axis=0), points.max(axis=0)  # NaN and inf show in these: one pass for every check
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        bad = int((~np.isfinite(points).all(axis=1)).sum())
        return "non_finite", f"{bad} of {points.shape[0]} points have NaN or inf coordinates"
    largest = float(max(np.abs(low).max(), np.abs(high).max()))
    if largest > limits.max_abs_coordinate_m:
        beyond = int((np.abs(points) > limits.max_abs_coordinate_m).any(axis=1).sum())
        return "out_of_range", (
            f"{beyond} of {points.shape[0]} points beyond +-{limits.max_abs_coordinate_m:g} m "
            f"(largest |coordinate| {largest:.4g}; preprocess.max_abs_coordinate_m)"
        )
    if points.shape[0] < limits.min_points:
        return "too_few_points", f"{points.shape[0]} points < preprocess.min_points = {limits.min_points}"
    enough, distinct = has_distinct_points(points, limits.min_distinct_points)
    if not enough:
        return "degenerate", (
            f"{distinct} distinct of {points.shape[0]} points < preprocess.min_distinct_points = "
            f"{limits.min_distinct_points}"
        )
    extent = high - low
    if float(extent.max()) < limits.min_extent_m:
        sizes = " x ".join(f"{value:.3g}" for value in extent)
        return "degenerate", f"bounding box {sizes} m, below preprocess.min_extent_m = {limits.min_extent_m:g} m"
    return None


def subsample(sample: Sample, max_points: int | None, seed: int) -> Sample:
    """A random subset of at most `max_points` points, in original order, reproducible per sample id."""
    count = sample.num_points
    if max_points is None or count <= max_points:
        return sample
    rng = np.random.default_rng([seed, zlib.crc32(sample.sample_id.encode())])
    keep = np.sort(rng.choice(count, size=max_points, replace=False))
    return replace(
        sample,
        points=sample.points[keep],
        features={name: values[keep] for name, values in sample.features.items()},
        labels=None if sample.labels is None else sample.labels[keep],
    )


def select_outputs(sample: Sample, keep_features: list[str], keep_labels: bool) -> Sample:
    """Drop features not in `keep_features` (and labels if not kept); points become float32."""
    return replace(
        sample,
        points=np.ascontiguousarray(sample.points, dtype=np.float32),
        features={name: values for name, values in sample.features.items() if name in keep_features},
        labels=sample.labels if keep_labels else None,
    )
