"""A user's own folder of scans: mixed formats ingest cleanly, corrupt scans never reach the shards,
nothing is altered silently, and every problem is reported with its reason."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixture_writers import write_las, write_ply
from test_preprocess import MIN_POINTS, download_and_preprocess, local_dataset, plane_cloud

from depthcontrast.data.records import UNLABELLED
from depthcontrast.data.shard_dataset import ShardDataset, absolute_points
from depthcontrast.errors import DataError
from depthcontrast.stages.download import run_download
from depthcontrast.stages.preprocess import run_preprocess
from tests.conftest import run_cli

GEO_OFFSET = np.array([512_345.0, 4_812_345.0, 230.0])  # UTM-like metres: float32 spacing there is 0.5 m in y
MILLIMETRE = 1e-3


def quarantined(out: Path) -> dict[str, str]:
    """raw file -> reason, from quarantine.json."""
    return {e["source"]: e["reason"] for e in json.loads((out / "quarantine.json").read_text())["entries"]}


def write_mixed_folder(folder: Path) -> None:
    """PLY with rgb and labels, LAS with intensity and classes, unlabelled NPY, and a broken file sorted first."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    (folder / "000_broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 10\n")  # header never ends
    room = plane_cloud(300, seed=1)
    write_ply(folder / "room.ply", room, rgb=rng.integers(0, 256, (300, 3)), labels=rng.integers(1, 5, 300))
    tile = plane_cloud(400, seed=2).astype(np.float64) * 10 + GEO_OFFSET
    intensity, classes = rng.integers(0, 4000, 400), rng.integers(1, 7, 400)
    write_las(folder / "tile.las", tile, intensity, classes, offset=(512_000, 4_812_000, 0))
    np.save(folder / "scan.npy", plane_cloud(250, seed=3))


def test_a_mixed_folder_keeps_every_real_scan_whatever_the_file_order(tmp_path: Path, caplog):
    write_mixed_folder(tmp_path / "scans")
    with caplog.at_level(logging.INFO, logger="depthcontrast"):
        out = download_and_preprocess(tmp_path / "scans", tmp_path / "work")
    assert quarantined(out) == {"000_broken.ply": "truncated"}
    dataset = ShardDataset(out)
    ids = [dataset[i]["sample_id"] for i in range(len(dataset))]
    assert ids == ["scans/room", "scans/scan", "scans/tile"]
    assert dataset.feature_names == ["intensity", "rgb"]
    assert dataset.index.feature_samples == {"intensity": 1, "rgb": 1}
    presence = {item["sample_id"]: item["features_present"].tolist() for item in map(dataset.__getitem__, range(3))}
    assert presence == {"scans/room": [0, 1], "scans/scan": [0, 0], "scans/tile": [1, 0]}
    assert dataset.has_labels and dataset.index.labelled_samples == 2
    assert (dataset[1]["labels"] == UNLABELLED).all() and (dataset[0]["labels"] >= 1).all()
    index = json.loads((out / "index.json").read_text())
    assert index["partial_features"] == "keep" and index["labelled_samples"] == 2
    said = [r.getMessage() for r in caplog.records if "samples" in r.getMessage()]
    assert sum("feature rgb in 1 of 3 samples" in line for line in said) == 1
    assert sum("labels in 2 of 3 samples" in line for line in said) == 1


def test_partial_features_drop_leaves_out_what_some_scans_lack(tmp_path: Path, caplog):
    write_mixed_folder(tmp_path / "scans")
    with caplog.at_level(logging.WARNING, logger="depthcontrast"):
        out = download_and_preprocess(tmp_path / "scans", tmp_path / "work", partial_features="drop")
    dataset = ShardDataset(out)
    assert len(dataset) == 3 and dataset.feature_names == []
    assert dataset.index.dropped_features == {"intensity": 1, "rgb": 1}
    assert any("left out of the whole dataset" in r.getMessage() for r in caplog.records)


def test_a_float64_cloud_at_georeferenced_offsets_round_trips_within_a_millimetre(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    cloud = plane_cloud(500, seed=4).astype(np.float64) * 50 + GEO_OFFSET
    np.save(folder / "survey.npy", cloud)
    cast_error = np.abs(cloud.astype(np.float32).astype(np.float64) - cloud).max()
    assert cast_error > 0.05  # what a plain float32 cast loses here
    dataset = ShardDataset(download_and_preprocess(folder, tmp_path / "work"))
    item = dataset[0]
    assert np.abs(absolute_points(item) - cloud).max() < MILLIMETRE
    assert item["origin"][2] == 0.0 and item["origin"][0] == np.floor(cloud[:, 0].min())  # only axes beyond 1 km
    assert dataset.index.shifted_samples == 1


def test_a_degenerate_scan_is_quarantined_with_the_threshold_it_missed(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "copies.npy", np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (5000, 1)))
    np.save(folder / "speck.npy", np.random.default_rng(0).uniform(0, 0.004, (2000, 3)).astype(np.float32))
    np.save(folder / "good.npy", plane_cloud(300, seed=5))
    out = download_and_preprocess(folder, tmp_path / "work")
    entries = {e["source"]: e for e in json.loads((out / "quarantine.json").read_text())["entries"]}
    assert {name: e["reason"] for name, e in entries.items()} == {"copies.npy": "degenerate", "speck.npy": "degenerate"}
    assert "1 distinct of 5000 points" in entries["copies.npy"]["detail"]
    assert "min_distinct_points" in entries["copies.npy"]["detail"]
    assert "min_extent_m" in entries["speck.npy"]["detail"]


def test_a_coordinate_beyond_the_configured_bound_is_out_of_range(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    far = plane_cloud(300, seed=6)
    far[7, 0] = 1e30
    np.save(folder / "far.npy", far)
    np.save(folder / "good.npy", plane_cloud(300, seed=7))
    out = download_and_preprocess(folder, tmp_path / "work")
    entry = json.loads((out / "quarantine.json").read_text())["entries"][0]
    assert (entry["source"], entry["reason"]) == ("far.npy", "out_of_range")
    assert "1 of 300 points beyond +-10000 m" in entry["detail"] and "max_abs_coordinate_m" in entry["detail"]


def write_centimetre_scan(folder: Path) -> np.ndarray:
    folder.mkdir()
    centimetres = np.rint(plane_cloud(300, seed=8) * 100).astype(np.int32)
    np.save(folder / "cm.npy", centimetres)
    np.save(folder / "good.npy", plane_cloud(300, seed=9))
    return centimetres


def test_integer_coordinates_are_quarantined_unless_their_unit_is_configured(tmp_path: Path, caplog):
    centimetres = write_centimetre_scan(tmp_path / "scans")
    out = download_and_preprocess(tmp_path / "scans", tmp_path / "a")
    entry = json.loads((out / "quarantine.json").read_text())["entries"][0]
    assert (entry["source"], entry["reason"]) == ("cm.npy", "wrong_dtype")
    assert "format.integer_unit_m" in entry["detail"]

    settings = local_dataset(tmp_path / "scans")
    settings["format"]["integer_unit_m"] = 0.01
    run_download("scans", settings["source"], tmp_path / "b" / "raw")
    with caplog.at_level(logging.INFO, logger="depthcontrast"):
        run_preprocess("scans", settings, tmp_path / "b" / "raw" / "MANIFEST.json", tmp_path / "b" / "shards")
    dataset = ShardDataset(tmp_path / "b" / "shards")
    assert len(dataset) == 2 and dataset.index.integer_samples == 1
    np.testing.assert_allclose(dataset[0]["points"], centimetres * 0.01, atol=1e-6)
    assert any("integer coordinates, converted at 0.01 m per step" in r.getMessage() for r in caplog.records)


def test_empty_files_and_unknown_extensions_are_listed_in_quarantine_json(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a.ply", "b.npy", "c.las", "d.pcd", "e.bin"):
        (folder / name).write_bytes(b"")
    (folder / "notes.txt").write_text("scanned on Monday\n")
    np.save(folder / "good.npy", plane_cloud(300, seed=10))
    out = download_and_preprocess(folder, tmp_path / "work")
    empty = dict.fromkeys(["a.ply", "b.npy", "c.las", "d.pcd", "e.bin"], "empty")
    assert quarantined(out) == {**empty, "notes.txt": "unknown_format"}
    details = [e["detail"] for e in json.loads((out / "quarantine.json").read_text())["entries"]]
    assert sum("empty file (0 bytes)" in d for d in details) == 5


def test_when_every_file_fails_the_error_shows_the_top_reasons_and_quarantine_json_is_written(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        (folder / f"bad_{i}.ply").write_bytes(b"not a ply\n")
    np.save(folder / "few.npy", plane_cloud(MIN_POINTS - 1, seed=0))
    config = tmp_path / "config.yaml"
    entry = {"source": {"kind": "local", "path": str(folder)}, "preprocess": {"min_points": MIN_POINTS}}
    config.write_text(yaml.safe_dump({"datasets": {"scans": entry}}))
    where = ("--config", str(config), "--dataset", "scans", "--results", str(tmp_path))
    assert run_cli("download", *where).returncode == 0
    result = run_cli("preprocess", *where)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("depthcontrast: error:")]
    assert len(error) == 1
    assert "4 left out: 3 unreadable (first: " in error[0] and "1 too_few_points" in error[0]
    assert "quarantine.json" in error[0]
    assert quarantined(tmp_path / "shards" / "scans") == {**dict.fromkeys(
        ["bad_0.ply", "bad_1.ply", "bad_2.ply"], "unreadable"), "few.npy": "too_few_points"}  # fmt: skip
    assert not (tmp_path / "shards" / "scans" / "index.json").exists()


def test_a_raw_file_edited_in_place_at_the_same_size_is_caught(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "a.npy", plane_cloud(300, seed=11))
    np.save(folder / "b.npy", plane_cloud(300, seed=12))
    settings = local_dataset(folder)
    run_download("scans", settings["source"], tmp_path / "raw")
    manifest = tmp_path / "raw" / "MANIFEST.json"
    os.utime(folder / "a.npy", ns=(0, 10**18))  # touched, same bytes: still fine
    run_preprocess("scans", settings, manifest, tmp_path / "out")
    np.save(folder / "b.npy", plane_cloud(300, seed=13))  # same shape and size, other points
    with pytest.raises(DataError, match=r"b\.npy: content changed since download \(same size, sha256 differs"):
        run_preprocess("scans", settings, manifest, tmp_path / "out")


def test_inspect_hashes_every_shard_unless_quick(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"s{i}.npy", plane_cloud(300, seed=20 + i))
    out = download_and_preprocess(folder, tmp_path / "work", samples_per_shard=2)
    good = run_cli("inspect", str(out), "--head", "1")
    assert good.returncode == 0 and "all 2 shards match index.json" in good.stdout
    last = out / "shard-00001.h5"
    data = bytearray(last.read_bytes())
    data[-100] ^= 0xFF
    last.write_bytes(bytes(data))
    bad = run_cli("inspect", str(out), "--head", "1")  # the sample shown lives in the first, intact shard
    assert bad.returncode == 2 and "shard-00001.h5: sha256 differs" in bad.stderr and "Traceback" not in bad.stderr
    quick = run_cli("inspect", str(out), "--head", "1", "--quick")
    assert quick.returncode == 0 and "not checked (--quick)" in quick.stdout
