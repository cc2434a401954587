"""The opt-in pretraining corpus (source kind `corpus`) on a tiny subset: two small meshes and a few rooms, and a
few LiDAR crops of the built-in tiles.

The real mesh package is never fetched here: `write_corpus` gets mesh files written by the test, the part of
the source that runs after the package is fetched and its meshes checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import yaml

from depthcontrast.config import validate_config
from depthcontrast.data.cgal_data import CORPUS_MESHES
from depthcontrast.data.lidar_tiles import MIN_CROP_POINTS
from depthcontrast.data.shards import read_index
from depthcontrast.data.sources.builtin import BUILTIN_DIR
from depthcontrast.data.sources.corpus import PROVENANCE_FILE, write_corpus, write_lidar_corpus
from depthcontrast.errors import ConfigError
from depthcontrast.evaluate.tasks import IGNORE_LABEL, INDOOR_CLASSES, load_samples, task_kind
from depthcontrast.io_utils import sha256_file
from tests.test_preprocess import download_and_preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
EVALUATION_MESHES = {"bunny", "armadillo", "chinese_dragon"}  # the built-in indoor data's objects


@pytest.fixture(scope="module")
def mesh_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("meshes")
    shapes = {"box": o3d.geometry.TriangleMesh.create_box(0.5, 0.3, 0.8),
              "ball": o3d.geometry.TriangleMesh.create_sphere(0.4, resolution=12)}  # fmt: skip
    for name, mesh in shapes.items():
        o3d.io.write_triangle_mesh(str(folder / f"{name}.off"), mesh)
    return {name: folder / f"{name}.off" for name in shapes}


def corpus_source(**overrides) -> dict:
    config = {"datasets": {"corpus": {"source": {"kind": "corpus", "rooms": 2, "frames_per_room": 2, **overrides}}}}
    return validate_config(config)["datasets"]["corpus"]["source"]


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_corpus_is_the_same_bytes_every_time_and_room_i_does_not_depend_on_the_room_count(
    tmp_path: Path, mesh_files: dict[str, Path]
) -> None:
    source = corpus_source(color=True)
    first = write_corpus(source, mesh_files, tmp_path / "a")
    write_corpus(source, mesh_files, tmp_path / "b")
    assert sorted(first) == sorted(hashes(tmp_path / "a"))
    assert len(first) == 2 * (1 + 2 * 2) + 1  # per room camera.json + depth and colour per frame; provenance
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")
    write_corpus(corpus_source(rooms=1), mesh_files, tmp_path / "one")
    one, two = hashes(tmp_path / "one"), hashes(tmp_path / "a")
    assert all(two[path] == digest for path, digest in one.items() if path != PROVENANCE_FILE)
    write_corpus(corpus_source(seed=1), mesh_files, tmp_path / "other")
    other = hashes(tmp_path / "other")
    assert other["room_00000/depth/000000.png"] != two["room_00000/depth/000000.png"]


def test_the_corpus_preprocesses_into_shards(tmp_path: Path, mesh_files: dict[str, Path]) -> None:
    write_corpus(corpus_source(rooms=3), mesh_files, tmp_path / "corpus")
    shards = download_and_preprocess(tmp_path / "corpus", tmp_path / "work")
    assert read_index(shards).num_samples == 3 * 2


def test_a_labelled_corpus_gives_indoor_task_labels_and_the_unlabelled_one_stays_the_same_bytes(
    tmp_path: Path, mesh_files: dict[str, Path]
) -> None:
    write_corpus(corpus_source(rooms=2), mesh_files, tmp_path / "plain")
    written = write_corpus(corpus_source(rooms=2, labels=True), mesh_files, tmp_path / "labelled")
    assert "room_00000/label/000000.png" in written
    plain, labelled = hashes(tmp_path / "plain"), hashes(tmp_path / "labelled")
    assert all(labelled[path] == digest for path, digest in plain.items() if path != PROVENANCE_FILE)
    shards = download_and_preprocess(tmp_path / "labelled", tmp_path / "work")
    samples = load_samples(shards, task_kind("indoor_segmentation"))
    assert sorted(set(samples.groups)) == ["room_00000", "room_00001"]
    classes = set(np.concatenate(samples.labels).tolist()) - {IGNORE_LABEL}
    assert {0, 1} <= classes <= set(range(len(INDOOR_CLASSES)))  # floor and walls at least, nothing unknown


def test_the_schema_takes_a_corpus_source_and_names_a_mesh_it_does_not_know() -> None:
    source = corpus_source()
    assert (source["seed"], source["color"]) == (0, False)
    assert not EVALUATION_MESHES & set(CORPUS_MESHES)
    with pytest.raises(ConfigError, match="teapot"):
        corpus_source(meshes=["teapot"])


def test_lidar_crops_are_the_same_bytes_every_time_and_keep_out_of_the_evaluation_test_tiles(tmp_path: Path) -> None:
    source = corpus_source(subset="lidar", crops=4)
    files = write_lidar_corpus(source, BUILTIN_DIR, tmp_path / "a")
    write_lidar_corpus(source, BUILTIN_DIR, tmp_path / "b")
    assert sorted(files) == sorted(hashes(tmp_path / "a")) and hashes(tmp_path / "a") == hashes(tmp_path / "b")
    crops = json.loads((tmp_path / "a" / PROVENANCE_FILE).read_text())["crops"]
    tasks = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())["evaluate"]["tasks"]
    test_tiles = {tile for task in tasks.values() if task["dataset"] == "demo_lidar" for tile in task["test_groups"]}
    assert test_tiles and not test_tiles & set(source["tiles"])
    assert {crop["tile"] for crop in crops.values()} <= set(source["tiles"])
    assert all(crop["points"] >= MIN_CROP_POINTS for crop in crops.values())
    shards = download_and_preprocess(tmp_path / "a", tmp_path / "work")
    assert read_index(shards).num_samples == 4
    samples = load_samples(shards, task_kind("lidar_segmentation"))  # its classes train the LiDAR task
    tile_of = {Path(rel).with_suffix("").as_posix(): crop["tile"] for rel, crop in crops.items()}
    assert sorted(samples.groups) == sorted(tile_of.values())
    assert all(samples.groups[i] == tile_of[sample.split("/", 1)[1]] for i, sample in enumerate(samples.sample_ids))
    assert all((labels != IGNORE_LABEL).any() for labels in samples.labels)
