"""Generic per-sample checks and subsampling, applied to every sample whatever its format."""

from __future__ import annotations

import zlib

import numpy as np

from depthcontrast.data.records import Sample


def rejection_reason(sample: Sample, min_points: int) -> tuple[str, str] | None:
    """(reason, detail) if the sample must be quarantined, else None. Reasons as errors.QUARANTINE_REASONS."""
    points = sample.points
    if points.ndim != 2 or points.shape[1] != 3 or not np.issubdtype(points.dtype, np.floating):
        return "wrong_dtype", f"points are {points.dtype} {points.shape}, expected float [P, 3]"
    if points.shape[0] == 0:
        return "empty", "no points"
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        return "non_finite", f"{int((~finite).sum())} of {points.shape[0]} points have NaN or inf coordinates"
    if points.shape[0] < min_points:
        return "too_few_points", f"{points.shape[0]} points < preprocess.min_points = {min_points}"
    return None


def subsample(sample: Sample, max_points: int | None, seed: int) -> Sample:
    """A random subset of at most `max_points` points, in original order, reproducible per sample id."""
    count = sample.num_points
    if max_points is None or count <= max_points:
        return sample
    rng = np.random.default_rng([seed, zlib.crc32(sample.sample_id.encode())])
    keep = np.sort(rng.choice(count, size=max_points, replace=False))
    return Sample(
        sample_id=sample.sample_id,
        points=sample.points[keep],
        features={name: values[keep] for name, values in sample.features.items()},
        labels=None if sample.labels is None else sample.labels[keep],
    )


def select_outputs(sample: Sample, keep_features: list[str], keep_labels: bool) -> Sample:
    """Drop features not in `keep_features` (and labels if not kept); points become float32."""
    return Sample(
        sample_id=sample.sample_id,
        points=np.ascontiguousarray(sample.points, dtype=np.float32),
        features={name: values for name, values in sample.features.items() if name in keep_features},
        labels=sample.labels if keep_labels else None,
    )
