"""The download and preprocess stages of a `kicad` dataset (the KiCad 3D part library as labelled objects).

download: the .deb (`source.deb`, else `apt-get download` into `source.cache`), checked against `source.sha256`,
its VRML models extracted to results/raw/<dataset>/models/; or an extracted folder (`source.root`) used in place.
MANIFEST.json lists every model with its sha256, and under `extra` the package, version, the .deb's sha256 and the
licence.

preprocess: every model parsed (data/vrml.py), `preprocess.max_points` points sampled on its surface (seeded by
`preprocess.seed` and its path) and scaled into the unit sphere (data/sources/kicad.py), written as one sample
`<dataset>/<library>/<model>` with every point labelled by its class index into `kicad.classes` of the shards'
params; objects.json lists each object's class, variant group, file, sha256 and size. A model that does not parse
or has no surface is quarantined (quarantine.json) with the one-line reason.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from depthcontrast.data.checks import SampleLimits, rejection_reason
from depthcontrast.data.manifest import MANIFEST_NAME, Manifest, describe_files, read_manifest, write_manifest
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.data.sources import kicad
from depthcontrast.data.vrml import read_vrml
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.io_utils import atomic_write_json, sha256_file
from depthcontrast.log import progress
from depthcontrast.paths import expand_env
from depthcontrast.stages.preprocess import QUARANTINE_NAME, WORKER_START_METHOD, check_raw_files_unchanged
from depthcontrast.stages.preprocess import _write_quarantine as write_quarantine

log = logging.getLogger(__name__)
MODELS_DIR = "models"
OBJECTS_NAME = "objects.json"
FORMAT_NAME = "kicad_vrml"


def _user_path(value: str, what: str) -> Path:
    return Path(expand_env(value, what=what)).expanduser().resolve()


def run_kicad_download(dataset: str, source: dict[str, Any], out_dir: Path) -> Manifest:
    """Locate or fetch the KiCad models as `source` (a validated `kind: kicad` block) says; write the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.get("root") and source.get("deb"):
        raise ConfigError(f"datasets.{dataset}.source: set deb (a .deb) or root (an extracted folder), not both")
    extra: dict[str, Any] = {"package": kicad.PACKAGE, "licence": kicad.LICENCE, "vrml_unit_mm": kicad.VRML_UNIT_MM}
    if source.get("root"):
        root = _user_path(source["root"], "source.root")
        files, root_field = kicad.folder_models(root), str(root)
        extra |= {"from": "folder", "version": source["version"]}
    else:
        if source.get("deb"):
            deb = _user_path(source["deb"], "source.deb")
            if not deb.is_file():
                raise DataError(f"{deb}: no such file (source.deb)")
            found = sha256_file(deb)
            if found != source["sha256"]:
                raise DataError(f"{deb}: sha256 {found} differs from the expected {source['sha256']} (source.sha256)")
        else:
            deb = kicad.fetch_deb(_user_path(source["cache"], "source.cache"), source["version"], source["sha256"])
        models = out_dir / MODELS_DIR
        building = out_dir / f".{MODELS_DIR}.partial"
        shutil.rmtree(building, ignore_errors=True)
        log.info("extracting the VRML models of %s into %s", deb, models)
        files = kicad.extract_models(deb, building)
        shutil.rmtree(models, ignore_errors=True)
        building.rename(models)
        files, root_field = [f"{MODELS_DIR}/{rel}" for rel in files], "."
        extra |= {"from": "deb", "version": source["version"], "deb": deb.name, "deb_sha256": source["sha256"]}
        root = out_dir
    log.info("hashing %d models under %s", len(files), root)
    manifest = Manifest(dataset, "kicad", root_field, describe_files(root, files), extra)
    write_manifest(manifest, out_dir / MANIFEST_NAME)
    libraries = Counter(kicad.model_path_parts(f)[0] for f in files)
    log.info(
        "download %s: %d models in %d libraries -> %s", dataset, len(files), len(libraries), out_dir / MANIFEST_NAME
    )
    return manifest


def object_of(
    path: Path, rel: str, dataset: str, count: int, seed: int
) -> tuple[Sample, dict[str, Any]] | QuarantineEntry:
    """One model → its sample (labels filled in later) and its object record, or why it is left out."""
    library, model = kicad.model_path_parts(rel)
    sample_id = f"{dataset}/{library.removesuffix(kicad.LIBRARY_SUFFIX)}/{model}"
    try:
        triangles = read_vrml(path)
    except DataError as exc:
        return QuarantineEntry(rel, sample_id, "unreadable", str(exc))
    if not len(triangles):
        return QuarantineEntry(rel, sample_id, "empty", f"{path}: no IndexedFaceSet triangles")
    if not np.isfinite(triangles).all():
        return QuarantineEntry(rel, sample_id, "non_finite", f"{path}: NaN or inf vertex coordinates")
    try:
        points = kicad.sample_surface(triangles, count, kicad.object_seed(seed, rel))
        points, radius = kicad.normalise(points, triangles)
    except DataError as exc:
        return QuarantineEntry(rel, sample_id, "degenerate", f"{path}: {exc}")
    record = {
        "sample_id": sample_id, "class": kicad.model_class(library), "group": kicad.variant_group(model),
        "file": rel, "triangles": len(triangles), "radius_mm": round(radius * kicad.VRML_UNIT_MM, 4),
    }  # fmt: skip
    return Sample(sample_id, points), record


def _objects(jobs: list[tuple[Path, str]], dataset: str, count: int, seed: int, workers: int):
    make = partial(_object_job, dataset=dataset, count=count, seed=seed)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(make, jobs)
        return
    with multiprocessing.get_context(WORKER_START_METHOD).Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(make, jobs, chunksize=8)


def _object_job(job: tuple[Path, str], dataset: str, count: int, seed: int):
    return object_of(job[0], job[1], dataset, count, seed)


def run_kicad_preprocess(
    dataset: str, settings: dict[str, Any], manifest_path: Path, out_dir: Path, workers: int = 1
) -> dict[str, Any]:
    """Sample every model of a `kicad` dataset into shards + index.json, objects.json and quarantine.json."""
    params = settings["preprocess"]
    count, seed = params["max_points"], params["seed"]
    if count is None:
        raise ConfigError(f"datasets.{dataset}.preprocess.max_points: a kicad dataset needs the points per object")
    manifest = read_manifest(manifest_path)
    check_raw_files_unchanged(manifest, manifest_path)
    digests = {raw.path: raw.sha256 for raw in manifest.files}
    jobs = [(manifest.abs_path(raw), raw.path.removeprefix(f"{MODELS_DIR}/")) for raw in manifest.files]
    classes = sorted({kicad.model_class(kicad.model_path_parts(rel)[0]) for _, rel in jobs})
    label_of = {name: index for index, name in enumerate(classes)}
    log.info("preprocess %s: %d models, %d classes, %d points each, %d workers", dataset, len(jobs), len(classes),
             count, workers)  # fmt: skip
    limits = SampleLimits.of_preprocess(params)
    writer = ShardWriter(
        out_dir, dataset=dataset, source="kicad",
        params={"format": {"name": FORMAT_NAME}, "preprocess": params,
                "kicad": {"classes": classes, "points": count, "seed": seed, "normalisation": "unit_sphere"}},
        samples_per_shard=params["samples_per_shard"], compression=params["compression"],
        compression_level=params["compression_level"], xyz_quantum_m=params["xyz_quantum_m"],
    )  # fmt: skip
    quarantine, objects = [], []
    with writer:
        for (_, rel), result in progress(
            zip(jobs, _objects(jobs, dataset, count, seed, workers), strict=True),
            desc=f"preprocess {dataset}", total=len(jobs), unit="model",
        ):  # fmt: skip
            if isinstance(result, tuple):
                sample, record = result
                rejected = rejection_reason(sample, limits)
                if rejected is not None:
                    result = QuarantineEntry(rel, sample.sample_id, rejected[0], f"{rel}: {rejected[1]}")
            if isinstance(result, QuarantineEntry):
                log.info("quarantined (%s) %s", result.reason, result.detail)
                quarantine.append(result)
                continue
            sample.labels = np.full(sample.num_points, label_of[record["class"]], dtype=np.int32)
            writer.add(sample)
            objects.append(record | {"sha256": _digest(digests, rel)})
        write_quarantine(out_dir / QUARANTINE_NAME, dataset, quarantine)
        if not objects:
            raise DataError(f"{manifest_path}: no model of dataset {dataset!r} could be sampled; every file and its "
                            f"reason: {out_dir / QUARANTINE_NAME}")  # fmt: skip
        atomic_write_json(out_dir / OBJECTS_NAME, {"dataset": dataset, "classes": classes, "objects": objects})
    reasons = Counter(entry.reason for entry in quarantine)
    log.info("preprocess %s: %d objects kept, %d quarantined %s", dataset, len(objects), len(quarantine),
             dict(sorted(reasons.items())))  # fmt: skip
    return {"samples": len(objects), "quarantined": len(quarantine), "reasons": dict(reasons)}


def _digest(digests: dict[str, str], rel: str) -> str:
    """The manifest sha256 of a model: its path is `models/<rel>` (extracted from a .deb) or `<rel>` (a folder)."""
    return digests.get(f"{MODELS_DIR}/{rel}") or digests[rel]
