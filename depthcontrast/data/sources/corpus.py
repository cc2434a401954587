"""The `corpus` source: an opt-in pretraining corpus of depth frames, generated here and the same bytes every time.

Rooms are built as for the built-in indoor data (data/rooms.py), filled with meshes from a pool of CGAL's data
(data/cgal_data.py: objects of many shapes, none of the built-in evaluation's meshes), and seen by the same
virtual depth camera. The rooms' generator is seeded from (CORPUS_SEED_DOMAIN, the source's `seed`, the room's
index), so they differ from the built-in rooms (another seed domain) and from another seed's corpus, and room
i is the same whatever `rooms` says. Output, the `depth_png` layout:

    room_<i>/camera.json, room_<i>/depth/<frame>.png (and color/<frame>.png with `color: true`)
    PROVENANCE.json   the package and every mesh with its sha256 and licence, the settings, each room's layout

The package is fetched once with `apt-get download` into $DEPTHCONTRAST_CACHE/corpus (else
~/.cache/depthcontrast/corpus) and checked by sha256, as is every mesh taken from it.
"""

from __future__ import annotations

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
from depthcontrast.io_utils import atomic_write_json
from depthcontrast.log import progress

log = logging.getLogger(__name__)

CORPUS_SEED_DOMAIN = 20261201  # first component of every room's seed: the built-in rooms use another
PROVENANCE_FILE = "PROVENANCE.json"
ROOM_CLASSES = ("no_return", "floor", "wall", "ceiling", "table", "object")  # colour only: no labels are written
ALBEDO = np.array(
    [(0.0, 0.0, 0.0), (0.55, 0.45, 0.35), (0.85, 0.84, 0.78), (0.95, 0.95, 0.95), (0.50, 0.32, 0.20), (0.7, 0.65, 0.6)]
)


def corpus_cache() -> Path:
    """$DEPTHCONTRAST_CACHE/corpus, else ~/.cache/depthcontrast/corpus."""
    root = os.environ.get("DEPTHCONTRAST_CACHE") or Path.home() / ".cache" / "depthcontrast"
    return Path(root) / "corpus"


def generate_corpus(source: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Fetch the mesh package, then write the corpus `source` (a validated `corpus` block) describes into
    `out_dir`; returns the files written, relative to it."""
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
            depth, _, colour = rooms.render(scene, part_classes, pose, ALBEDO)
            images = {"depth": depth, **({"color": colour} if source["color"] else {})}
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
        "settings": {key: source[key] for key in ("rooms", "frames_per_room", "seed", "color")},
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
