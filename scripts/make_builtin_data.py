#!/usr/bin/env python3
"""Regenerate the built-in dataset (depthcontrast/builtin/) from registry packages, deterministically.

Inputs (fetched with the registries' own clients, checked against the sha256 constants below):
  - laspy 2.7.0 sdist (PyPI): real aerial LiDAR test tiles with per-point ASPRS classes;
  - Debian libcgal-demo 5.5.1-2: CGAL's data (real LiDAR with classes, meshes of real scans).
Outputs:
  - lidar/<tile>_<ix>_<iy>.laz: square x/y crops of the LiDAR tiles (xyz, intensity, classification);
  - indoor/<scene>/{camera.json,depth/,label/,color/}: single-view depth frames ray-cast from the
    scanned meshes placed in generated rooms (the `depth_png` layout), plus indoor/classes.json;
  - MANIFEST.json: every file's size and sha256, provenance, licences, what was done.
See docs/BUILTIN_DATA.md. Usage: python scripts/make_builtin_data.py [--out DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData

from depthcontrast.data.cgal_data import (
    CGAL_DEB,
    CGAL_DOC_DIR,
    CGAL_PACKAGE,
    CGAL_VERSION,
    LICENCE_CGAL,
    check_sha256,
    deb_data_tar,
    fetch_cgal_deb,
    read_member,
    run_command,
)
from depthcontrast.data.lidar_tiles import (
    ASPRS_GROUND,
    ASPRS_UNCLASSIFIED,
    LAS_POINT_FORMAT,
    LAS_SCALE_M,
    LAS_VERSION,
    LOW_Z_PERCENTILE,
    MIN_CROP_POINTS,
    MIN_GROUND_POINTS,
    Cloud,
    ground_z,
    read_las,
    write_laz,
)
from depthcontrast.data.manifest import Manifest, describe_files, write_manifest
from depthcontrast.data.rooms import (
    CX,
    CY,
    DEPTH_SCALE,
    FLOOR_OBJECT_SIZE_M,
    FX,
    IMAGE_H,
    IMAGE_W,
    MAX_DEPTH_M,
    MIN_DEPTH_M,
    POSE_DECIMALS,
    ROOM_HEIGHT_M,
    ROOM_SIDE_M,
    TABLE_OBJECT_SIZE_M,
    Part,
    build_room,
    camera_file,
    camera_pose,
    camera_targets,
    raycasting_scene,
    read_mesh,
    render,
    write_png,
)
from depthcontrast.errors import DataError, DepthContrastError
from depthcontrast.io_utils import atomic_path, atomic_write_json
from depthcontrast.log import progress, setup_logging

log = logging.getLogger("make_builtin_data")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "depthcontrast" / "builtin"
MAX_TOTAL_BYTES = 10 * 1000 * 1000
OUTPUT_DIRS = ("lidar", "indoor", "LICENSES")  # what this script owns under --out (plus MANIFEST.json)
LICENCE_COPY = "LICENSES/laspy-2.7.0-LICENSE.txt"  # BSD-2 asks redistributions to keep the notice

# ---- inputs --------------------------------------------------------------------------------------
LASPY_VERSION = "2.7.0"
LASPY_SDIST = f"laspy-{LASPY_VERSION}.tar.gz"
LASPY_SDIST_SHA256 = "f56feb5445e75d6ff12ee814aab6a35339290e75264ff277c6bf553f3025a3f5"
LICENCE_LASPY = "BSD-2-Clause (laspy sdist LICENSE.txt; test data shipped in the sdist)"


@dataclass(frozen=True)
class InputFile:
    """One original file inside a downloaded archive. `inner` names a nested tarball in the deb."""

    key: str
    archive: str  # LASPY_SDIST or CGAL_DEB
    inner: str | None
    member: str
    sha256: str

    @property
    def package(self) -> str:
        return (
            f"laspy {LASPY_VERSION} (PyPI sdist)"
            if self.archive == LASPY_SDIST
            else (f"{CGAL_PACKAGE} {CGAL_VERSION} (Debian bookworm)")
        )

    @property
    def origin(self) -> str:
        inner = f"{CGAL_DOC_DIR}{self.inner}:" if self.inner else ""
        return f"{self.archive}:{inner}{self.member}"

    def provenance(self) -> dict[str, str]:
        licence = LICENCE_LASPY if self.archive == LASPY_SDIST else LICENCE_CGAL
        return {"package": self.package, "path": self.origin, "sha256": self.sha256, "licence": licence}


INPUTS = {
    f.key: f
    for f in (
        InputFile(
            "autzen",
            LASPY_SDIST,
            None,
            f"laspy-{LASPY_VERSION}/tests/data/autzen_trim.laz",
            "75867b3e75cfc3c2e96da9f753c04c9fbaa6a59468dea13e2859f3109b38bd66",
        ),
        InputFile(
            "append_bug",
            LASPY_SDIST,
            None,
            f"laspy-{LASPY_VERSION}/tests/data/append-bug.laz",
            "15b8493da724b03f073f7b677981fd14177a00da5ff9751c57c0285d6c0b3f16",
        ),
        InputFile(
            "laspy_licence",
            LASPY_SDIST,
            None,
            f"laspy-{LASPY_VERSION}/LICENSE.txt",
            "586e5e4d12f36050240d2702abcd3319593f13841440920244f95f15cb83eb63",
        ),
        InputFile(
            "wkt_geotiff",
            LASPY_SDIST,
            None,
            f"laspy-{LASPY_VERSION}/tests/data/file_with_both_wkt_and_geotiff_vlrs.las",
            "58bc14d3268eecf5f286d463b2de4d99e1d045bb6e0f626827d9c2f0ee6053c8",
        ),
        InputFile(
            "cgal_urban",
            CGAL_DEB,
            "examples.tar.gz",
            "examples/Point_set_processing_3/data/urban.las",
            "c7ef4cf960ba45ce4e8e347cbdc6526d1b0aff46c6e1b45540ec0589247c97e5",
        ),
        InputFile(
            "cgal_b9",
            CGAL_DEB,
            "data.tar.gz",
            "data/points_3/b9_training.ply",
            "94c05829a78b1ebbb6882dda0e5e263f30331ff10820a0beb61843001ad0b46d",
        ),
        InputFile(
            "bunny",
            CGAL_DEB,
            "data.tar.gz",
            "data/meshes/bunny00.off",
            "ab651cb04955c161efaeb079035a1e5e1f0e0d1f816a2df67beaea68f393ff2b",
        ),
        InputFile(
            "armadillo",
            CGAL_DEB,
            "data.tar.gz",
            "data/meshes/armadillo.off",
            "6f7f3ca1abc506569466b72f2f59d49493a284e7376d7a7e23c08115ec8cec4e",
        ),
        InputFile(
            "chinese_dragon",
            CGAL_DEB,
            "data.tar.gz",
            "data/meshes/ChineseDragon-10kv.off",
            "f633bdfaac7a0f99e0fab668c34862f0c26f341cfdb4665bab282d79b788db02",
        ),
    )
}

# ---- LiDAR crops ---------------------------------------------------------------------------------
# tile -> crop edge in metres, picked per tile density so crops hold roughly 5k-20k points.
LIDAR_CROP_SIZE_M = {
    "autzen": 150.0,
    "append_bug": 25.0,
    "wkt_geotiff": 30.0,
    "cgal_urban": 100.0,
    "cgal_b9": 50.0,
}
# CGAL's b9 training labels (example_ethz_random_forest.cpp: ground, vegetation, roof; -1 unlabelled).
B9_LABEL_TO_ASPRS = {-1: ASPRS_UNCLASSIFIED, 0: ASPRS_GROUND, 1: 5, 2: 6}  # 5 high vegetation, 6 building

# ---- indoor scenes (the camera, rooms and placement: depthcontrast/data/rooms.py) ---------------------
SEED = 20261124
NUM_SCENES = 8
FRAMES_PER_SCENE = 6
MESH_UPSTREAM = {  # where CGAL's copies come from, as far as known (the package does not say)
    "bunny": "Stanford Bunny (Stanford 3D Scanning Repository), a closed (hole-filled) version",
    "armadillo": "Stanford Armadillo (Stanford 3D Scanning Repository), a simplified version",
    "chinese_dragon": "a scanned Chinese guardian-lion statue (10k vertices); origin not stated",
}
# Rotation about x that turns each mesh's up axis into +z (all three are +y up; checked by rendering).
MESH_UP_ROTATION_DEG = {"bunny": 90.0, "armadillo": 90.0, "chinese_dragon": 90.0}
CLASSES = ["no_return", "floor", "wall", "ceiling", "table", "bunny", "armadillo", "chinese_dragon"]
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
ALBEDO = {  # simulated colour: per-class albedo x Lambert
    "floor": (0.55, 0.45, 0.35),
    "wall": (0.85, 0.84, 0.78),
    "ceiling": (0.95, 0.95, 0.95),
    "table": (0.50, 0.32, 0.20),
    "bunny": (0.80, 0.70, 0.55),
    "armadillo": (0.60, 0.62, 0.75),
    "chinese_dragon": (0.75, 0.62, 0.30),
}
ALBEDO_TABLE = np.array([(0.0, 0.0, 0.0)] + [ALBEDO[c] for c in CLASSES[1:]])  # by class id


# ==== fetching ====================================================================================
def fetch_archives(work: Path) -> dict[str, Path]:
    """Download the laspy sdist (pip) and the CGAL deb (apt-get) into `work`; verify their sha256."""
    work.mkdir(parents=True, exist_ok=True)
    sdist = work / LASPY_SDIST
    if not sdist.is_file():
        log.info("pip download %s", LASPY_SDIST)
        run_command(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"laspy=={LASPY_VERSION}", "-d", str(work)],
            work,
        )  # fmt: skip
    check_sha256(sdist, LASPY_SDIST_SHA256)
    return {LASPY_SDIST: sdist, CGAL_DEB: fetch_cgal_deb(work)}


def extract_inputs(archives: dict[str, Path], work: Path) -> dict[str, Path]:
    """Extract every INPUTS member into work/inputs/<key>/, verifying each sha256."""
    out: dict[str, Path] = {}
    with contextlib.ExitStack() as stack:
        sdist = stack.enter_context(tarfile.open(archives[LASPY_SDIST]))
        deb = stack.enter_context(tarfile.open(fileobj=io.BytesIO(deb_data_tar(archives[CGAL_DEB]))))
        nested = {
            inner: stack.enter_context(
                tarfile.open(fileobj=io.BytesIO(read_member(deb, CGAL_DOC_DIR + inner, archives[CGAL_DEB])))
            )
            for inner in sorted({spec.inner for spec in INPUTS.values() if spec.inner})
        }
        for key in sorted(INPUTS):
            spec = INPUTS[key]
            archive = nested[spec.inner] if spec.inner else sdist
            data = read_member(archive, spec.member, archives[spec.archive])
            dest = work / "inputs" / key / Path(spec.member).name
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
            check_sha256(dest, spec.sha256)
            out[key] = dest
    return out


# ==== LiDAR ======================================================================================
def read_b9_ply(path: Path) -> Cloud:
    """Read CGAL's b9_training.ply; map its labels to ASPRS codes (B9_LABEL_TO_ASPRS). RGB is dropped:
    it only encodes the label colour."""
    try:
        vertex = PlyData.read(str(path))["vertex"].data
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
        labels = np.asarray(vertex["label"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not the expected PLY with x, y, z, label ({exc})") from None
    unknown = sorted(set(np.unique(labels).tolist()) - set(B9_LABEL_TO_ASPRS))
    if unknown:
        raise DataError(f"{path}: unexpected labels {unknown}")
    lut = np.zeros(max(B9_LABEL_TO_ASPRS) + 2, np.uint8)
    for label, code in B9_LABEL_TO_ASPRS.items():
        lut[label + 1] = code
    return Cloud(xyz, None, lut[labels + 1])


def crop_tile(name: str, cloud: Cloud, size: float, out_dir: Path) -> list[dict[str, Any]]:
    """Cut `cloud` into size x size crops from its x/y minimum; write those with enough points."""
    cell = np.floor((cloud.xyz[:, :2] - cloud.xyz[:, :2].min(axis=0)) / size).astype(np.int64)
    x0, y0 = cloud.xyz[:, :2].min(axis=0)
    crops = []
    for ix, iy in sorted({(int(a), int(b)) for a, b in cell}):
        mask = (cell[:, 0] == ix) & (cell[:, 1] == iy)
        if mask.sum() < MIN_CROP_POINTS:
            log.info("%s crop %d,%d: %d points < %d, dropped", name, ix, iy, mask.sum(), MIN_CROP_POINTS)
            continue
        xyz, classes = cloud.xyz[mask], cloud.classification[mask]
        origin = np.round([x0 + (ix + 0.5) * size, y0 + (iy + 0.5) * size, ground_z(xyz, classes)], 3)
        rel = f"lidar/{name}_{ix}_{iy}.laz"
        intensity = None if cloud.intensity is None else cloud.intensity[mask]
        write_laz(out_dir / rel, xyz - origin, intensity, classes)
        codes, counts = np.unique(classes, return_counts=True)
        crops.append(
            {
                "file": rel,
                "ix": ix,
                "iy": iy,
                "points": int(mask.sum()),
                "origin_subtracted": origin.tolist(),
                "classes": {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
            }
        )
    return crops


def make_lidar(inputs: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """All LiDAR crops; returns the manifest group (per tile: provenance, crop size, crops)."""
    tiles = {}
    for name in progress(sorted(LIDAR_CROP_SIZE_M), desc="lidar tiles", unit="tile"):
        path = inputs[name]
        cloud = read_b9_ply(path) if name == "cgal_b9" else read_las(path)
        crops = crop_tile(name, cloud, LIDAR_CROP_SIZE_M[name], out_dir)
        tiles[name] = {
            "source": INPUTS[name].provenance(),
            "points_in_source": len(cloud.xyz),
            "has_intensity": cloud.intensity is not None,
            "crop_size_m": LIDAR_CROP_SIZE_M[name],
            "crops": crops,
        }
        log.info("%s: %d points -> %d crops", name, len(cloud.xyz), len(crops))
    tiles["cgal_b9"]["label_mapping"] = {
        "cgal_label_to_asprs": {str(k): v for k, v in B9_LABEL_TO_ASPRS.items()},
        "why": "CGAL's classification examples name b9's labels 0 ground, 1 vegetation, 2 roof; "
        "-1 is unlabelled. Mapped to ASPRS 2 ground, 5 high vegetation (trees, ~9 m above "
        "ground), 6 building, 1 unclassified.",
    }
    return {
        "captured_vs_simulated": "Captured: every point is a real airborne LiDAR return with the class "
        "given by the data's producer. Nothing is simulated.",
        "processing": [
            "Each tile cut into square x/y crops of crop_size_m from the tile's x/y minimum; crops "
            f"with fewer than {MIN_CROP_POINTS} points dropped.",
            "Points re-centred: origin_subtracted = (crop-square centre x, y, ground z), where ground z "
            f"is the median z of ASPRS class 2 points (>= {MIN_GROUND_POINTS} of them), else the "
            f"{LOW_Z_PERCENTILE:g}th percentile of z. Units stay metres; CRS VLRs are dropped.",
            f"Written as LAS {LAS_VERSION} point format {LAS_POINT_FORMAT} LAZ, scale {LAS_SCALE_M} m, "
            "keeping xyz, intensity (raw source units; 0 where the source has none) and classification.",
        ],
        "tiles": tiles,
    }


# ==== indoor scenes ==============================================================================
def load_meshes(inputs: dict[str, Path]) -> dict[str, Part]:
    """The scanned meshes, rotated z-up, centred in x/y, resting on z=0, largest side 1."""
    return {name: read_mesh(inputs[name], name, MESH_UP_ROTATION_DEG[name]) for name in sorted(MESH_UP_ROTATION_DEG)}


def make_indoor(inputs: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """All indoor scenes; returns the manifest group."""
    meshes = load_meshes(inputs)
    atomic_write_json(out_dir / "indoor" / "classes.json", {str(i): c for i, c in enumerate(CLASSES)})
    scenes = {}
    for index in progress(range(NUM_SCENES), desc="indoor scenes", unit="scene"):
        name = f"room_{index:02d}"
        rng = np.random.default_rng([SEED, index])
        parts, layout = build_room(rng, meshes)
        scene = raycasting_scene(parts)
        part_classes = np.array([CLASS_ID[p.cls] for p in parts])
        targets = camera_targets(layout)
        poses, pixels = {}, {}
        for frame_index in range(FRAMES_PER_SCENE):
            frame = f"{frame_index:06d}"
            pose = camera_pose(rng, layout["room_m"], targets)
            depth, label, colour = render(scene, part_classes, pose, ALBEDO_TABLE)
            for kind, array in (("depth", depth), ("label", label), ("color", colour)):
                write_png(out_dir / "indoor" / name / kind / f"{frame}.png", array)
            poses[frame] = pose.tolist()
            ids, counts = np.unique(label, return_counts=True)
            pixels[frame] = {CLASSES[i]: int(n) for i, n in zip(ids, counts, strict=True)}
        atomic_write_json(out_dir / "indoor" / name / "camera.json", camera_file(poses))
        scenes[name] = {**layout, "pixels_per_class": pixels}
        log.info("%s: %d objects, %d frames", name, len(layout["objects"]), FRAMES_PER_SCENE)
    return {
        "captured_vs_simulated": "Captured: the object geometry (meshes reconstructed from real 3D scans). "
        "Simulated: the rooms (boxes), object placement and scale, the depth camera "
        "(exact ray casting, no sensor noise, mm quantisation) and the colour "
        "(per-class albedo x Lambert shading, not a photograph).",
        "meshes": {
            name: {**INPUTS[name].provenance(), "upstream": MESH_UPSTREAM[name]}
            for name in sorted(MESH_UP_ROTATION_DEG)
        },
        "processing": [
            "Meshes rotated so their up axis is +z, scaled so their largest side is "
            f"{FLOOR_OBJECT_SIZE_M} m on the floor or {TABLE_OBJECT_SIZE_M} m on a table, spun about z.",
            f"Rooms {ROOM_SIDE_M} m square-ish, {ROOM_HEIGHT_M} m high; world z up, floor at z=0.",
            f"Pinhole {IMAGE_W}x{IMAGE_H}, fx=fy={FX}, cx={CX}, cy={CY}; depth = z along the optical axis "
            f"in mm (depth_scale {DEPTH_SCALE}), 0 outside [{MIN_DEPTH_M}, {MAX_DEPTH_M}] m.",
            f"Seeded numpy generators (seed {SEED}, scene index); poses rounded to {POSE_DECIMALS} decimals "
            "before ray casting.",
        ],
        "classes": {str(i): c for i, c in enumerate(CLASSES)},
        "scenes": scenes,
    }


# ==== driver =====================================================================================
def clear_outputs(out_dir: Path) -> None:
    """Remove what a previous run of this script wrote (and only that)."""
    for sub in OUTPUT_DIRS:
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    (out_dir / "MANIFEST.json").unlink(missing_ok=True)


def build(out_dir: Path, work: Path) -> int:
    """Fetch, verify, generate and describe the built-in data; return the total size in bytes."""
    archives = fetch_archives(work)
    inputs = extract_inputs(archives, work)
    clear_outputs(out_dir)
    with atomic_path(out_dir / LICENCE_COPY) as tmp:
        shutil.copyfile(inputs["laspy_licence"], tmp)
    groups = {"lidar": make_lidar(inputs, out_dir), "indoor": make_indoor(inputs, out_dir)}
    shipped = sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file() and p.parts[len(out_dir.parts)] in OUTPUT_DIRS
    )
    files = describe_files(out_dir, shipped)
    total = sum(f.size for f in files)
    extra = {
        "generator": "scripts/make_builtin_data.py",
        "regenerate": "python scripts/make_builtin_data.py --out depthcontrast/builtin",
        "groups": groups,
        "licence_files": {LICENCE_COPY: INPUTS["laspy_licence"].provenance()},
    }
    write_manifest(Manifest("builtin", "builtin", ".", files, extra), out_dir / "MANIFEST.json")
    return total + (out_dir / "MANIFEST.json").stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="download/extraction folder, kept for reuse (default: a temporary folder)",
    )
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    setup_logging(debug=args.debug)
    try:
        if args.work is None:
            with tempfile.TemporaryDirectory(prefix="builtin-work-") as work:
                total = build(args.out, Path(work))
        else:
            total = build(args.out, args.work)
    except DepthContrastError as exc:
        if args.debug:
            raise
        log.error("%s", exc)
        return 1
    print(f"built-in data in {args.out}: {total / 1e6:.2f} MB (budget {MAX_TOTAL_BYTES / 1e6:.0f} MB)")
    if total > MAX_TOTAL_BYTES:
        log.error("total size %d bytes exceeds the %d byte budget", total, MAX_TOTAL_BYTES)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
