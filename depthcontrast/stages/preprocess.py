"""The preprocess stage: decode raw files in parallel, check samples, write HDF5 shards + reports."""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from depthcontrast.data.checks import SampleLimits, rejection_reason, select_outputs, subsample
from depthcontrast.data.formats import decode_unit, plan_dataset
from depthcontrast.data.manifest import Manifest, read_manifest
from depthcontrast.data.records import UNLABELLED, QuarantineEntry, Sample
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.data.shards import ShardIndex
from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_write_json, sha256_file
from depthcontrast.log import progress

log = logging.getLogger(__name__)
QUARANTINE_NAME = "quarantine.json"
TOP_REASONS_SHOWN = 3
# spawn: workers never inherit open HDF5/open3d state from the parent
WORKER_START_METHOD = "spawn"


def _decoded(units: list, fmt: dict[str, Any], workers: int):
    """Yield each unit's decode result in plan order, using a process pool when workers > 1."""
    decode = partial(decode_unit, fmt=fmt)
    if workers <= 1 or len(units) <= 1:
        yield from map(decode, units)
        return
    context = multiprocessing.get_context(WORKER_START_METHOD)
    with context.Pool(min(workers, len(units))) as pool:
        yield from pool.imap(decode, units, chunksize=1)


def run_preprocess(
    dataset: str, settings: dict[str, Any], manifest_path: Path, out_dir: Path, workers: int = 1
) -> dict[str, Any]:
    """Turn the dataset's raw files into shards under `out_dir`; return a summary.

    `settings` is the dataset's validated config entry (its `format` and `preprocess` blocks are used).
    Outputs: shard-*.h5, quarantine.json (also when nothing was usable), and index.json (written last:
    its presence means done).
    """
    fmt, params = settings["format"], settings["preprocess"]
    manifest = read_manifest(manifest_path)
    check_raw_files_unchanged(manifest, manifest_path)
    plan = plan_dataset(manifest, fmt, dataset)
    log.info(
        "preprocess %s: %d units from %d raw files, %d workers",
        dataset,
        len(plan.units),
        len(manifest.files),
        workers,
    )
    quarantine = [
        QuarantineEntry(rel, None, "unknown_format", f"{rel}: no known point format (by its extension); skipped")
        for rel in plan.skipped
    ]
    limits = SampleLimits.of_preprocess(params)
    kept = 0
    writer = ShardWriter(
        out_dir,
        dataset=dataset,
        source=manifest.source_kind,
        params={"format": fmt, "preprocess": params},
        samples_per_shard=params["samples_per_shard"],
        compression=params["compression"],
        compression_level=params["compression_level"],
        xyz_quantum_m=params["xyz_quantum_m"],
        partial_features=params["partial_features"],
    )
    with writer:
        for unit, results in progress(
            zip(plan.units, _decoded(plan.units, fmt, workers), strict=True),
            desc=f"preprocess {dataset}",
            total=len(plan.units),
            unit="file",
        ):
            for item in results:
                entry = item if isinstance(item, QuarantineEntry) else _accept(item, unit.source, params, limits)
                if isinstance(entry, QuarantineEntry):
                    log.info("quarantined (%s) %s", entry.reason, _described(entry))
                    quarantine.append(entry)
                else:
                    writer.add(entry)
                    kept += 1
        _write_quarantine(out_dir / QUARANTINE_NAME, dataset, quarantine)
        if kept == 0:
            raise DataError(
                f"{manifest_path}: no usable samples in dataset {dataset!r}: {_top_reasons(quarantine)}; "
                f"every file and its reason: {out_dir / QUARANTINE_NAME}"
            )
    _log_dataset_rules(dataset, writer.index)
    reasons = Counter(entry.reason for entry in quarantine)
    log.info(
        "preprocess %s: %d samples kept, %d quarantined %s",
        dataset,
        kept,
        len(quarantine),
        dict(sorted(reasons.items())),
    )
    return {"samples": kept, "quarantined": len(quarantine), "reasons": dict(reasons)}


def _top_reasons(entries: list[QuarantineEntry]) -> str:
    """'12 unreadable (a.ply: ...), 3 degenerate (...)': the commonest reasons with an example each."""
    if not entries:
        return "the dataset has no files of a point format"
    counts = Counter(entry.reason for entry in entries).most_common(TOP_REASONS_SHOWN)
    first = {}
    for entry in entries:
        first.setdefault(entry.reason, _described(entry))
    shown = ", ".join(f"{count} {reason} (first: {first[reason]})" for reason, count in counts)
    more = len({entry.reason for entry in entries}) - len(counts)
    return f"{len(entries)} left out: {shown}" + (f", and {more} other reasons" if more > 0 else "")


def _described(entry: QuarantineEntry) -> str:
    """The entry's detail, led by its raw file unless the detail names it already."""
    return entry.detail if entry.source in entry.detail else f"{entry.source}: {entry.detail}"


def _log_dataset_rules(dataset: str, index: ShardIndex | None) -> None:
    """State once how features, labels and coordinates were decided for the whole dataset, with counts."""
    if index is None:
        return
    total = index.num_samples
    for name, count in index.feature_samples.items():
        if count < total:
            log.warning(
                "preprocess %s: feature %s in %d of %d samples (partial_features: keep): stored as 0 and marked "
                "absent in the others' feature_present record",
                dataset, name, count, total,
            )  # fmt: skip
    for name, count in index.dropped_features.items():
        log.warning(
            "preprocess %s: feature %s in only %d of %d samples: left out of the whole dataset (partial_features: "
            "drop; set keep to store it with a per-sample presence record)",
            dataset, name, count, total,
        )  # fmt: skip
    if index.has_labels and index.labelled_samples < total:
        log.warning(
            "preprocess %s: labels in %d of %d samples; every point of the other %d is stored as %d (unlabelled)",
            dataset, index.labelled_samples, total, total - index.labelled_samples, UNLABELLED,
        )  # fmt: skip
    if index.shifted_samples:
        log.info(
            "preprocess %s: %d samples stored relative to a local origin (float32 precision); the shards keep "
            "each origin", dataset, index.shifted_samples,
        )  # fmt: skip
    if index.integer_samples:
        unit = index.params["format"]["integer_unit_m"]
        log.info("preprocess %s: %d samples had integer coordinates, converted at %g m per step "
                 "(format.integer_unit_m)", dataset, index.integer_samples, unit)  # fmt: skip


def _accept(sample: Sample, source: str, params: dict[str, Any], limits: SampleLimits) -> Sample | QuarantineEntry:
    rejected = rejection_reason(sample, limits)
    if rejected is not None:
        reason, detail = rejected
        return QuarantineEntry(source=source, sample_id=sample.sample_id, reason=reason, detail=detail)
    sample = scaled(subsample(sample, params["max_points"], params["seed"]), params.get("xyz_scale", 1.0))
    return select_outputs(sample, params["keep_features"], params["keep_labels"])


def scaled(sample: Sample, scale: float) -> Sample:
    """`sample` with its coordinates (points and origin) multiplied by `scale` (preprocess.xyz_scale)."""
    if scale == 1.0:
        return sample
    points = (sample.points.astype(np.float64) * scale).astype(sample.points.dtype, copy=False)
    return replace(sample, points=points, origin=np.asarray(sample.origin, np.float64) * scale)


def check_raw_files_unchanged(manifest: Manifest, manifest_path: Path) -> None:
    """Every listed raw file exists with its size; one whose modification time moved (or with no time in an
    old manifest) is hashed against the manifest's sha256. A difference is a DataError naming the file."""
    rerun = "rerun the download stage (snakemake --forcerun download, or depthcontrast download) to list it anew"
    for raw in manifest.files:
        path = manifest.abs_path(raw)
        if not path.is_file():
            raise DataError(f"{path}: listed in {manifest_path} but missing; {rerun}")
        stat = path.stat()
        if stat.st_size != raw.size:
            raise DataError(
                f"{path}: size {stat.st_size} differs from the {raw.size} bytes in {manifest_path}: the file changed "
                f"since download; {rerun}"
            )
        if raw.mtime_ns == stat.st_mtime_ns:
            continue
        if sha256_file(path) != raw.sha256:
            raise DataError(
                f"{path}: content changed since download (same size, sha256 differs from {manifest_path}); {rerun}"
            )


def _write_quarantine(path: Path, dataset: str, entries: list[QuarantineEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path,
        {
            "dataset": dataset,
            "num_quarantined": len(entries),
            "by_reason": dict(sorted(Counter(e.reason for e in entries).items())),
            "entries": [asdict(e) for e in entries],
        },
    )
