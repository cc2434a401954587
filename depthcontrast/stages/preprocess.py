"""The preprocess stage: decode raw files in parallel, check samples, write HDF5 shards + reports."""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from depthcontrast.data.checks import rejection_reason, select_outputs, subsample
from depthcontrast.data.formats import decode_unit, plan_units
from depthcontrast.data.manifest import read_manifest
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.data.shards import ShardWriter
from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_write_json
from depthcontrast.log import progress

log = logging.getLogger(__name__)
QUARANTINE_NAME = "quarantine.json"
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
    Outputs: shard-*.h5, quarantine.json, and index.json (written last: its presence means done).
    """
    fmt, params = settings["format"], settings["preprocess"]
    manifest = read_manifest(manifest_path)
    _check_raw_files_present(manifest)
    units = plan_units(manifest, fmt, dataset)
    log.info(
        "preprocess %s: %d units from %d raw files, %d workers",
        dataset,
        len(units),
        len(manifest.files),
        workers,
    )
    quarantine: list[QuarantineEntry] = []
    features = FeatureSetPolicy()
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
    )
    with writer:
        for unit, results in progress(
            zip(units, _decoded(units, fmt, workers), strict=True),
            desc=f"preprocess {dataset}",
            total=len(units),
            unit="file",
        ):
            for item in results:
                if isinstance(item, QuarantineEntry):
                    quarantine.append(item)
                    continue
                entry = _accept(item, unit.source, params)
                if not isinstance(entry, QuarantineEntry):
                    entry = features.apply(entry, unit.source)
                if isinstance(entry, QuarantineEntry):
                    quarantine.append(entry)
                else:
                    writer.add(entry)
                    kept += 1
        if kept == 0:
            raise DataError(
                f"{manifest_path}: no usable samples in dataset {dataset!r} "
                f"({len(quarantine)} quarantined; see the reasons with --debug or in the log)"
            )
        _write_quarantine(out_dir / QUARANTINE_NAME, dataset, quarantine)
    features.log_summary(dataset)
    reasons = Counter(entry.reason for entry in quarantine)
    log.info(
        "preprocess %s: %d samples kept, %d quarantined %s",
        dataset,
        kept,
        len(quarantine),
        dict(sorted(reasons.items())),
    )
    return {"samples": kept, "quarantined": len(quarantine), "reasons": dict(reasons)}


class FeatureSetPolicy:
    """One feature set per dataset, fixed by its first kept sample (shards need one column layout).

    A later sample with extra features is trimmed to the set (counted and logged); one lacking a
    feature of the set is quarantined as `missing_features`, never padded with invented values.
    """

    def __init__(self) -> None:
        self.names: set[str] | None = None
        self.trimmed = 0

    def apply(self, sample: Sample, source: str) -> Sample | QuarantineEntry:
        present = set(sample.features)
        if self.names is None:
            self.names = present
        missing = self.names - present
        if missing:
            detail = f"lacks {sorted(missing)} that this dataset's samples have; set preprocess.keep_features"
            return QuarantineEntry(source=source, sample_id=sample.sample_id, reason="missing_features", detail=detail)
        if present - self.names:
            self.trimmed += 1
            sample.features = {name: sample.features[name] for name in sorted(self.names)}
        return sample

    def log_summary(self, dataset: str) -> None:
        if self.trimmed:
            log.warning(
                "preprocess %s: kept only features %s (those of the first sample) in %d samples",
                dataset,
                sorted(self.names or ()),
                self.trimmed,
            )


def _accept(sample: Sample, source: str, params: dict[str, Any]) -> Sample | QuarantineEntry:
    rejected = rejection_reason(sample, params["min_points"])
    if rejected is not None:
        reason, detail = rejected
        return QuarantineEntry(source=source, sample_id=sample.sample_id, reason=reason, detail=detail)
    sample = subsample(sample, params["max_points"], params["seed"])
    return select_outputs(sample, params["keep_features"], params["keep_labels"])


def _check_raw_files_present(manifest) -> None:
    for raw in manifest.files:
        path = manifest.abs_path(raw)
        if not path.is_file():
            raise DataError(f"{path}: listed in the {manifest.dataset} manifest but missing; rerun download")
        if path.stat().st_size != raw.size:
            raise DataError(
                f"{path}: size {path.stat().st_size} differs from the manifest's {raw.size}; "
                "the raw file changed since download: rerun the download stage"
            )


def _write_quarantine(path: Path, dataset: str, entries: list[QuarantineEntry]) -> None:
    atomic_write_json(
        path,
        {
            "dataset": dataset,
            "num_quarantined": len(entries),
            "by_reason": dict(sorted(Counter(e.reason for e in entries).items())),
            "entries": [asdict(e) for e in entries],
        },
    )
