"""The `corpus` source: an opt-in pretraining corpus, generated here and the same bytes every time.

`subset: indoor` (the default): depth frames. Rooms are built as for the built-in indoor data (data/rooms.py),
filled with meshes from a pool of CGAL's data (data/cgal_data.py: objects of many shapes, none of the built-in
evaluation's meshes), and seen by the same virtual depth camera. Room i's generator is seeded from
(CORPUS_SEED_DOMAIN, the source's `seed`, i), so the rooms differ from the built-in ones (another seed domain)
and from another seed's corpus, and room i is the same whatever `rooms` says. Output, the `depth_png` layout:

    room_<i>/camera.json, room_<i>/depth/<frame>.png (and color/<frame>.png with `color: true`)

The package is fetched once with `apt-get download` into $DEPTHCONTRAST_CACHE/corpus (else
~/.cache/depthcontrast/corpus) and checked by sha256, as is every mesh taken from it.

`subset: lidar`: more crops of the real aerial LiDAR tiles, cut from the built-in data's tiles (re-assembled
from its crops; no download): crop j is a square of about the tile's built-in crop size, centred on a random
point of a random tile (weighted by points), turned by a random yaw, re-centred like the built-in crops, as
`<tile>/crop_<j>.laz` with intensity and classes (the folder names the crop's tile, for the evaluation's
group-disjoint splits). The default `tiles` are those the built-in LiDAR evaluation trains on,
not its test tiles.

Both write PROVENANCE.json: the inputs with their sha256 and licences, the settings and what each room or crop
holds.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from depthcontrast.data.cgal_data import (
    CGAL_DEB,
    CGAL_DEB_SHA256,
    CGAL_MESH_DIR,
    CGAL_PACKAGE,
    CGAL_VERSION,
    CORPUS_MESHES,
    LICENCE_CGAL,
    extract_corpus_meshes,
    fetch_cgal_deb,
)
from depthcontrast.data.sources.builtin import BUILTIN_DIR
from depthcontrast.io_utils import atomic_write_json
from depthcontrast.log import progress

log = logging.getLogger(__name__)

CORPUS_SEED_DOMAIN = 20261201  # first component of every room's seed: the built-in rooms use another
PROVENANCE_FILE = "PROVENANCE.json"
LIDAR_STREAM = 1  # second seed component of the LiDAR crops
CROP_SIZE_FACTOR = (0.75, 1.25)  # a crop's side, times its tile's built-in crop size
CROP_TRIES = 20
LAS_SOFTWARE = "depthcontrast corpus"
ROOM_CLASSES = ("no_return", "floor", "wall", "ceiling", "table", "object")  # label ids (labels: true) and colours
ALBEDO = np.array(
    [(0.0, 0.0, 0.0), (0.55, 0.45, 0.35), (0.85, 0.84, 0.78), (0.95, 0.95, 0.95), (0.50, 0.32, 0.20), (0.7, 0.65, 0.6)]
)


def corpus_cache() -> Path:
    """$DEPTHCONTRAST_CACHE/corpus, else ~/.cache/depthcontrast/corpus."""
    root = os.environ.get("DEPTHCONTRAST_CACHE") or Path.home() / ".cache" / "depthcontrast"
    return Path(root) / "corpus"


def generate_corpus(source: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Write the corpus `source` (a validated `corpus` block) describes into `out_dir` (fetching the mesh
    package first for `subset: indoor`); returns the files written, relative to it."""
    if source["subset"] == "lidar":
        return write_lidar_corpus(source, BUILTIN_DIR, out_dir)
    names = sorted(source.get("meshes") or CORPUS_MESHES)
    cache = corpus_cache()
    deb = fetch_cgal_deb(cache)
    meshes = extract_corpus_meshes(deb, names, cache / "meshes")
    return write_corpus(source, meshes, out_dir)


def write_corpus(source: Mapping[str, Any], mesh_files: Mapping[str, Path], out_dir: Path) -> list[str]:
    """The rooms of `source` with the meshes of `mesh_files` (name -> file) in `out_dir`; the files written.

    Anything this writes is a function of its arguments and the files' bytes, so a rerun gives the same bytes.
    """
    from depthcontrast.data import rooms  # open3d: only when a corpus is made

    meshes = {name: rooms.read_mesh(path, name) for name, path in sorted(mesh_files.items())}
    class_id = {name: i for i, name in enumerate(ROOM_CLASSES)}
    written: list[str] = []
    layouts = {}
    for index in progress(range(source["rooms"]), desc="corpus rooms", unit="room"):
        name = f"room_{index:05d}"
        rng = np.random.default_rng([CORPUS_SEED_DOMAIN, source["seed"], index])
        parts, layout = rooms.build_room(rng, meshes)
        scene = rooms.raycasting_scene(parts)
        part_classes = np.array([class_id.get(part.cls, class_id["object"]) for part in parts])
        targets = rooms.camera_targets(layout)
        poses = {}
        for frame_index in range(source["frames_per_room"]):
            frame = f"{frame_index:06d}"
            pose = rooms.camera_pose(rng, layout["room_m"], targets)
            depth, label, colour = rooms.render(scene, part_classes, pose, ALBEDO)
            images = {"depth": depth, **({"color": colour} if source["color"] else {})}
            if source.get("labels"):
                images["label"] = label
            for kind, array in images.items():
                rooms.write_png(out_dir / name / kind / f"{frame}.png", array)
                written.append(f"{name}/{kind}/{frame}.png")
            poses[frame] = pose.tolist()
        atomic_write_json(out_dir / name / "camera.json", rooms.camera_file(poses))
        written.append(f"{name}/camera.json")
        layouts[name] = layout
    atomic_write_json(out_dir / PROVENANCE_FILE, provenance(source, mesh_files, layouts))
    log.info("corpus: %d rooms x %d frames -> %s", source["rooms"], source["frames_per_room"], out_dir)
    return [*written, PROVENANCE_FILE]


def provenance(source: Mapping[str, Any], mesh_files: Mapping[str, Path], layouts: dict[str, Any]) -> dict:
    """What the corpus is made of and how: PROVENANCE.json."""
    return {
        "generator": "depthcontrast.data.sources.corpus",
        "settings": {key: source[key] for key in ("subset", "rooms", "frames_per_room", "seed", "color")}
        | ({"labels": True} if source.get("labels") else {}),
        "seed_of_room_i": [CORPUS_SEED_DOMAIN, source["seed"], "i"],
        "package": {"name": CGAL_PACKAGE, "version": CGAL_VERSION, "file": CGAL_DEB, "sha256": CGAL_DEB_SHA256},
        "licence": LICENCE_CGAL,
        "meshes": {
            name: {"path": f"{CGAL_MESH_DIR}{Path(path).name}", "sha256": CORPUS_MESHES.get(name, "")}
            for name, path in sorted(mesh_files.items())
        },
        "captured_vs_simulated": "The meshes are CGAL's example data (scanned and modelled objects; CGAL does not "
        "say which is which). Simulated: the rooms, the placement, the depth camera (exact ray casting, mm "
        "steps, no noise) and the colour (albedo x Lambert).",
        "rooms": layouts,
    }


def write_lidar_corpus(source: Mapping[str, Any], builtin_dir: Path, out_dir: Path) -> list[str]:
    """`source["crops"]` crops of the built-in LiDAR `source["tiles"]` (under `builtin_dir`) in `out_dir`."""
    from depthcontrast.data import lidar_tiles  # laspy: only when a LiDAR corpus is made

    names = sorted(source["tiles"])
    tiles = {name: lidar_tiles.builtin_tile(builtin_dir, name) for name in names}
    weights = np.array([len(tiles[name][0].xyz) for name in names], dtype=np.float64)
    written, crops = [], {}
    for index in progress(range(source["crops"]), desc="corpus crops", unit="crop"):
        rng = np.random.default_rng([CORPUS_SEED_DOMAIN, LIDAR_STREAM, source["seed"], index])
        name = names[rng.choice(len(names), p=weights / weights.sum())]
        cloud, size = tiles[name]
        crop, record = random_crop(rng, cloud, size * rng.uniform(*CROP_SIZE_FACTOR))
        rel = f"{name}/crop_{index:05d}.laz"
        lidar_tiles.write_laz(out_dir / rel, crop.xyz, crop.intensity, crop.classification, software=LAS_SOFTWARE)
        written.append(rel)
        crops[rel] = {"tile": name, **record}
    atomic_write_json(out_dir / PROVENANCE_FILE, lidar_provenance(source, builtin_dir, names, crops))
    log.info("corpus: %d LiDAR crops of %s -> %s", source["crops"], ", ".join(names), out_dir)
    return [*written, PROVENANCE_FILE]


def random_crop(rng: np.random.Generator, cloud: Any, size: float) -> tuple[Any, dict[str, Any]]:
    """A size x size square of `cloud` about a random point of it, turned by a random yaw, re-centred on
    (its centre, its ground height); the square with the most points of CROP_TRIES tries if none reaches
    MIN_CROP_POINTS."""
    from depthcontrast.data.lidar_tiles import MIN_CROP_POINTS, Cloud, ground_z

    best = None
    for _ in range(CROP_TRIES):
        centre = cloud.xyz[rng.integers(len(cloud.xyz)), :2]
        yaw = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(yaw), np.sin(yaw)
        offset = cloud.xyz[:, :2] - centre
        local = np.stack([c * offset[:, 0] + s * offset[:, 1], -s * offset[:, 0] + c * offset[:, 1]], axis=1)
        inside = np.all(np.abs(local) <= size / 2, axis=1)
        if best is None or inside.sum() > best[0].sum():
            best = (inside, local, centre, yaw)
        if inside.sum() >= MIN_CROP_POINTS:
            break
    inside, local, centre, yaw = best
    classes = cloud.classification[inside]
    z0 = round(ground_z(cloud.xyz[inside], classes), 3)
    xyz = np.column_stack([local[inside], cloud.xyz[inside, 2] - z0])
    intensity = None if cloud.intensity is None else cloud.intensity[inside]
    record = {"centre_xy": np.round(centre, 3).tolist(), "ground_z": z0, "yaw_rad": round(float(yaw), 4),
              "size_m": round(float(size), 3), "points": int(inside.sum())}  # fmt: skip
    return Cloud(xyz, intensity, classes), record


def lidar_provenance(source: Mapping[str, Any], builtin_dir: Path, names: list[str], crops: dict) -> dict:
    """What the LiDAR corpus is made of and how: PROVENANCE.json."""
    tiles = json.loads((builtin_dir / "MANIFEST.json").read_text())["extra"]["groups"]["lidar"]["tiles"]
    return {
        "generator": "depthcontrast.data.sources.corpus",
        "settings": {key: source[key] for key in ("subset", "crops", "tiles", "seed")},
        "seed_of_crop_j": [CORPUS_SEED_DOMAIN, LIDAR_STREAM, source["seed"], "j"],
        "tiles": {
            name: {"source": tiles[name]["source"], "built_in_crops": [c["file"] for c in tiles[name]["crops"]]}
            for name in names
        },
        "captured_vs_simulated": "Captured: every point is a real airborne LiDAR return with its producer's "
        "class. Only the cropping (random squares, turned, re-centred) is ours.",
        "crops": crops,
    }
