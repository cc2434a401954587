"""Dataset formats end to end: official layouts → planned units → decoded samples or quarantine."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
from fixture_writers import (
    gradient_rgb,
    plane_depth,
    truncate,
    write_classes,
    write_depth_png_scene,
    write_kitti_bin,
    write_kitti_tree,
    write_las,
    write_npy,
    write_pcd,
    write_ply,
    write_redwood_folder,
    write_redwood_zip,
    write_sens,
    write_tfrecord,
    write_waymo_extracted,
)

from depthcontrast.config import validate_config
from depthcontrast.data.formats import Unit, decode_unit, official_layout_files, plan_units
from depthcontrast.data.formats.waymo import iter_tfrecord_records, waymo_available
from depthcontrast.data.manifest import Manifest, describe_files
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.errors import DataError, SampleError

SENS_INTRINSICS = (60.0, 60.0, 15.5, 11.5)
REDWOOD_FX, REDWOOD_CX, REDWOOD_CY = 525.0, 319.5, 239.5


def make_fmt(**overrides) -> dict:
    """A validated `format` block: the schema's defaults plus `overrides`."""
    entry = {"source": {"kind": "local", "path": "."}, "format": overrides}
    return validate_config({"datasets": {"ds": entry}})["datasets"]["ds"]["format"]


def manifest_for(root: Path, kind: str = "local", rels: list[str] | None = None) -> Manifest:
    if rels is None:
        rels = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return Manifest("ds", kind, str(root), describe_files(root, rels))


def decode_all(units, fmt) -> tuple[list[Sample], list[QuarantineEntry]]:
    results = [r for unit in units for r in decode_unit(unit, fmt)]
    return [r for r in results if isinstance(r, Sample)], [r for r in results if isinstance(r, QuarantineEntry)]


# ----------------------------------------------------------------------------------- ScanNet .sens
def sens_frames(count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frame i is a plane at 2.0 + 0.1·i m; colour at twice the depth resolution."""
    return [plane_depth(24, 32, 2000 + 100 * i) for i in range(count)], [gradient_rgb(48, 64)] * count


@pytest.fixture
def scannet_root(tmp_path) -> Path:
    depth, color = sens_frames(12)
    write_sens(tmp_path / "scannet" / "scans" / "scene0000_00" / "scene0000_00.sens", depth, color, SENS_INTRINSICS)
    (tmp_path / "scannet" / "scans" / "scene0000_00" / "scene0000_00_vh_clean.ply").write_text("not needed")
    return tmp_path / "scannet"


def test_scannet_layout_plans_one_unit_per_sens_and_keeps_every_10th_frame(scannet_root):
    rels = official_layout_files("scannet", scannet_root)
    assert rels == ["scans/scene0000_00/scene0000_00.sens"]
    units = plan_units(manifest_for(scannet_root, "scannet", rels), make_fmt(), "ds")
    assert [(u.format, u.sample_prefix) for u in units] == [("scannet_sens", "ds/scene0000_00")]
    samples, quarantined = decode_all(units, make_fmt())
    assert quarantined == []
    assert [s.sample_id for s in samples] == ["ds/scene0000_00/000000", "ds/scene0000_00/000010"]
    first, tenth = samples
    assert np.all(first.points[:, 2] == 2.0) and np.allclose(tenth.points[:, 2], 3.0)
    rows, cols = np.mgrid[0:24, 0:32]
    np.testing.assert_allclose(first.points[:, 0], (cols.ravel() - 15.5) * 2.0 / 60.0, rtol=1e-6)
    np.testing.assert_allclose(first.points[:, 1], (rows.ravel() - 11.5) * 2.0 / 60.0, rtol=1e-6)
    assert first.features["rgb"].shape == (24 * 32, 3) and first.features["rgb"].dtype == np.uint8


def test_sens_frame_step_from_config(scannet_root):
    units = plan_units(manifest_for(scannet_root, "scannet", official_layout_files("scannet", scannet_root)),
                       make_fmt(frame_step=3), "ds")  # fmt: skip
    samples, _ = decode_all(units, make_fmt(frame_step=3))
    assert [s.sample_id[-6:] for s in samples] == ["000000", "000003", "000006", "000009"]


def test_sens_cut_mid_frame_keeps_earlier_frames_and_quarantines_the_rest_as_truncated(tmp_path):
    depth, color = sens_frames(12)
    path = write_sens(tmp_path / "s" / "s.sens", depth, color, SENS_INTRINSICS)
    eight_frames = write_sens(tmp_path / "eight.sens", depth[:8], color[:8], SENS_INTRINSICS).stat().st_size
    path.write_bytes(path.read_bytes()[: eight_frames - 10])  # the file now ends inside frame 7
    units = plan_units(manifest_for(tmp_path, rels=["s/s.sens"]), make_fmt(frame_step=5), "ds")
    samples, quarantined = decode_all(units, make_fmt(frame_step=5))
    assert [s.sample_id for s in samples] == ["ds/s/000000", "ds/s/000005"]
    assert [(q.reason, q.sample_id, q.source) for q in quarantined] == [("truncated", "ds/s/000010", "s/s.sens")]


def test_sens_frame_with_corrupt_depth_is_quarantined_alone(tmp_path):
    depth, color = sens_frames(4)
    write_sens(tmp_path / "s.sens", depth, color, SENS_INTRINSICS, corrupt_depth_frames=[2])
    units = plan_units(manifest_for(tmp_path), make_fmt(frame_step=1), "ds")
    samples, quarantined = decode_all(units, make_fmt(frame_step=1))
    assert [s.sample_id for s in samples] == ["ds/s/000000", "ds/s/000001", "ds/s/000003"]
    assert [(q.reason, q.sample_id) for q in quarantined] == [("unreadable", "ds/s/000002")]


def test_sens_that_is_not_a_sens_file_is_unreadable_as_a_whole(tmp_path):
    (tmp_path / "bad.sens").write_bytes(np.random.default_rng(1).bytes(5000))
    _, quarantined = decode_all(plan_units(manifest_for(tmp_path), make_fmt(), "ds"), make_fmt())
    assert [(q.reason, q.sample_id) for q in quarantined] == [("unreadable", None)]


# ------------------------------------------------------------------------------------------ Redwood
def test_redwood_zip_takes_every_15th_frame_with_fixed_intrinsics_and_colour(tmp_path):
    write_redwood_zip(
        tmp_path / "rgbd" / "00042.zip", [plane_depth(480, 640, 1500)] * 31, [gradient_rgb(480, 640)] * 31
    )
    rels = official_layout_files("redwood", tmp_path)
    assert rels == ["rgbd/00042.zip"]
    samples, quarantined = decode_all(plan_units(manifest_for(tmp_path, "redwood", rels), make_fmt(), "ds"), make_fmt())
    assert quarantined == []
    assert [s.sample_id for s in samples] == ["ds/00042/0000001", "ds/00042/0000016", "ds/00042/0000031"]
    points = samples[0].points
    assert points.shape == (480 * 640, 3) and np.all(points[:, 2] == 1.5)
    np.testing.assert_allclose(points[0], [-REDWOOD_CX * 1.5 / REDWOOD_FX, -REDWOOD_CY * 1.5 / REDWOOD_FX, 1.5])
    assert samples[0].features["rgb"].dtype == np.uint8 and samples[0].features["rgb"].shape == (480 * 640, 3)


def test_unzipped_redwood_folder_is_one_unit_and_colour_images_are_not_units(tmp_path):
    write_redwood_folder(tmp_path / "00007", [plane_depth(480, 640, 800)] * 12, [gradient_rgb(480, 640)] * 12)
    rels = official_layout_files("redwood", tmp_path)
    assert len(rels) == 24
    units = plan_units(manifest_for(tmp_path, "redwood", rels), make_fmt(frame_step=10), "ds")
    assert [(u.source, u.sample_prefix) for u in units] == [("00007", "ds/00007")]
    samples, _ = decode_all(units, make_fmt(frame_step=10))
    assert [s.sample_id for s in samples] == ["ds/00007/0000001", "ds/00007/0000011"]
    assert all("rgb" in s.features for s in samples)


def test_redwood_frame_of_another_size_needs_explicit_intrinsics(tmp_path):
    write_redwood_zip(tmp_path / "small.zip", [plane_depth(240, 320, 1000)] * 2)
    units = plan_units(manifest_for(tmp_path, "redwood"), make_fmt(frame_step=1), "ds")
    _, quarantined = decode_all(units, make_fmt(frame_step=1))
    assert [(q.reason, q.sample_id) for q in quarantined] == [("unreadable", "ds/small/0000001"),
                                                              ("unreadable", "ds/small/0000002")]  # fmt: skip
    given = make_fmt(frame_step=1, intrinsics={"fx": 262.5, "fy": 262.5, "cx": 159.5, "cy": 119.5})
    samples, quarantined = decode_all(units, given)
    assert quarantined == [] and len(samples) == 2


def test_truncated_redwood_zip_is_truncated(tmp_path):
    path = write_redwood_zip(tmp_path / "cut.zip", [plane_depth(480, 640, 1000)] * 3)
    truncate(path, 200)
    _, quarantined = decode_all(plan_units(manifest_for(tmp_path, "redwood"), make_fmt(), "ds"), make_fmt())
    assert [(q.reason, q.sample_id) for q in quarantined] == [("truncated", None)]


# -------------------------------------------------------------------------------------------- KITTI
def test_kitti_layout_finds_velodyne_sweeps_only_and_point_range_crops(tmp_path):
    write_kitti_tree(tmp_path, training=3, testing=2)
    rels = official_layout_files("kitti", tmp_path)
    assert rels == [f"testing/velodyne/00000{i}.bin" for i in range(2)] + [
        f"training/velodyne/00000{i}.bin" for i in range(3)
    ]
    box = [0, -40, -3, 70.4, 40, 1]
    units = plan_units(manifest_for(tmp_path, "kitti", rels), make_fmt(point_range=box), "ds")
    assert [u.format for u in units] == ["kitti_bin"] * 5
    assert units[0].sample_prefix == "ds/testing/velodyne/000000"
    samples, quarantined = decode_all(units, make_fmt(point_range=box))
    assert quarantined == [] and len(samples) == 5
    for sample in samples:
        assert 0 < sample.num_points < 500
        assert np.all(sample.points >= np.float32(box[:3])) and np.all(sample.points <= np.float32(box[3:]))
        assert sample.features["intensity"].shape == (sample.num_points, 1)


def test_truncated_kitti_sweep_is_quarantined_as_truncated(tmp_path):
    write_kitti_tree(tmp_path, training=2)
    truncate(tmp_path / "training" / "velodyne" / "000001.bin", 5)
    units = plan_units(manifest_for(tmp_path, "kitti", official_layout_files("kitti", tmp_path)), make_fmt(), "ds")
    samples, quarantined = decode_all(units, make_fmt())
    assert [s.sample_id for s in samples] == ["ds/training/velodyne/000000"]
    assert [(q.source, q.reason, q.sample_id) for q in quarantined] == [
        ("training/velodyne/000001.bin", "truncated", None)
    ]


# -------------------------------------------------------------------------------------------- Waymo
def test_waymo_extracted_npy_layout_needs_no_official_package(tmp_path):
    write_waymo_extracted(tmp_path, {"10017_6380_000_6400_000": 3, "10023_100_000_120_000": 2})
    rels = official_layout_files("waymo", tmp_path)
    assert len(rels) == 5
    units = plan_units(manifest_for(tmp_path, "waymo", rels), make_fmt(), "ds")
    assert [u.sample_prefix for u in units] == [
        "ds/10017_6380_000_6400_000/frame_000", "ds/10017_6380_000_6400_000/frame_002",
        "ds/10017_6380_000_6400_000/frame_004", "ds/10023_100_000_120_000/frame_000",
        "ds/10023_100_000_120_000/frame_002",
    ]  # fmt: skip
    samples, quarantined = decode_all(units, make_fmt())
    assert quarantined == [] and all(s.points.shape == (300, 3) and s.points.dtype == np.float32 for s in samples)


@pytest.mark.skipif(waymo_available(), reason="the official Waymo package is installed here")
def test_waymo_tfrecord_without_the_official_package_says_what_to_install(tmp_path):
    write_tfrecord(tmp_path / "segment-123_456_with_camera_labels.tfrecord", [b"frame0", b"frame1"])
    manifest = manifest_for(tmp_path, "waymo", official_layout_files("waymo", tmp_path))
    with pytest.raises(DataError, match=r"pip install waymo-open-dataset.*frame_XXX\.npy"):
        plan_units(manifest, make_fmt(), "ds")


def test_tfrecord_framing_is_read_and_a_cut_record_is_truncated(tmp_path):
    path = write_tfrecord(tmp_path / "a.tfrecord", [b"first", b"second record"])
    assert list(iter_tfrecord_records(path)) == [b"first", b"second record"]
    truncate(path, 6)
    records = iter_tfrecord_records(path)
    assert next(records) == b"first"
    with pytest.raises(SampleError) as caught:
        next(records)
    assert caught.value.reason == "truncated"


# ---------------------------------------------------------------------------------------- depth_png
@pytest.fixture
def depth_png_root(tmp_path) -> Path:
    root = tmp_path / "indoor"
    root.mkdir()
    write_classes(root, {0: "no_return", 1: "floor", 2: "chair"})
    (root / "README.md").write_text("built-in scans\n")
    frames = ["0", "1", "2", "10"]
    depth = {f: plane_depth(12, 16, 2000) for f in frames}
    labels = {f: np.full((12, 16), 2, dtype=np.uint8) for f in frames}
    color = {"0": gradient_rgb(12, 16)}
    write_depth_png_scene(root, "room_b", depth, (20.0, 20.0, 7.5, 5.5), color_frames=color, label_frames=labels)
    write_depth_png_scene(root, "room_a", depth, (20.0, 20.0, 7.5, 5.5), depth_scale=4000.0)
    return root


def test_depth_png_scenes_plan_one_unit_per_frame_in_natural_order(depth_png_root):
    units = plan_units(manifest_for(depth_png_root), make_fmt(), "ds")
    ids = [u.sample_prefix for u in units]
    assert ids == [f"ds/{scene}/{f}" for scene in ("room_a", "room_b") for f in ("0", "1", "2", "10")]
    assert {u.format for u in units} == {"depth_png"}
    assert plan_units(manifest_for(depth_png_root), make_fmt(), "ds") == units
    stepped = plan_units(manifest_for(depth_png_root), make_fmt(frame_step=2), "ds")
    assert [u.sample_prefix for u in stepped] == ["ds/room_a/0", "ds/room_a/2", "ds/room_b/0", "ds/room_b/2"]


def test_depth_png_frame_gives_geometry_colour_and_labels(depth_png_root):
    units = plan_units(manifest_for(depth_png_root), make_fmt(), "ds")
    samples, quarantined = decode_all(units, make_fmt())
    assert quarantined == []
    by_id = {s.sample_id: s for s in samples}
    room_b = by_id["ds/room_b/0"]
    assert np.all(room_b.points[:, 2] == 2.0) and room_b.points.shape == (12 * 16, 3)
    np.testing.assert_allclose(room_b.points[0, :2], [-7.5 * 2.0 / 20.0, -5.5 * 2.0 / 20.0])
    assert room_b.features["rgb"].dtype == np.uint8 and room_b.features["rgb"].shape == (12 * 16, 3)
    assert room_b.labels.dtype == np.int32 and np.all(room_b.labels == 2)
    assert "rgb" not in by_id["ds/room_b/1"].features
    assert np.all(by_id["ds/room_a/0"].points[:, 2] == 0.5)  # camera.json depth_scale 4000


def test_truncated_depth_png_is_quarantined_as_truncated(depth_png_root):
    truncate(depth_png_root / "room_a" / "depth" / "1.png", 30)
    _, quarantined = decode_all(plan_units(manifest_for(depth_png_root), make_fmt(), "ds"), make_fmt())
    assert [(q.source, q.reason) for q in quarantined] == [("room_a/depth/1.png", "truncated")]


# ------------------------------------------------------------------------------- generic files, auto
def test_auto_format_skips_unknown_files_with_a_warning(tmp_path, caplog):
    points = np.random.default_rng(0).uniform(0, 10, (100, 3))
    write_ply(tmp_path / "a.ply", points.astype(np.float32))
    write_las(tmp_path / "tiles" / "b.laz", points, np.ones(100), np.full(100, 2))
    write_npy(tmp_path / "c.npy", points)
    (tmp_path / "notes.xyz").write_text("1 2 3\n")
    (tmp_path / "LICENSE").write_text("CC0\n")
    (tmp_path / "LICENSES").mkdir()
    (tmp_path / "LICENSES" / "laspy-LICENSE.txt").write_text("BSD\n")
    with caplog.at_level(logging.WARNING):
        units = plan_units(manifest_for(tmp_path), make_fmt(), "ds")
    assert [(u.sample_prefix, u.format) for u in units] == [
        ("ds/a", "ply"),
        ("ds/c", "npy"),
        ("ds/tiles/b", "las"),
    ]
    assert "notes.xyz" in caplog.text and "LICENSE" not in caplog.text and "1 file(s)" in caplog.text
    samples, quarantined = decode_all(units, make_fmt())
    assert quarantined == [] and [s.num_points for s in samples] == [100, 100, 100]
    assert samples[2].labels.dtype == np.int32


def test_explicit_format_quarantines_files_of_another_format(tmp_path):
    points = np.random.default_rng(0).uniform(0, 10, (50, 3))
    write_ply(tmp_path / "a.ply", points.astype(np.float32))
    write_las(tmp_path / "b.las", points, np.ones(50), np.full(50, 2))
    units = plan_units(manifest_for(tmp_path), make_fmt(name="ply"), "ds")
    samples, quarantined = decode_all(units, make_fmt(name="ply"))
    assert [s.sample_id for s in samples] == ["ds/a"]
    assert [(q.source, q.reason, q.sample_id) for q in quarantined] == [("b.las", "unreadable", None)]
    assert "not a ply file" in quarantined[0].detail


def test_broken_generic_files_get_their_reasons_through_decode_unit(tmp_path):
    points = np.random.default_rng(0).uniform(0, 10, (300, 3)).astype(np.float32)
    truncate(write_ply(tmp_path / "cut.ply", points), 100)
    (tmp_path / "noise.ply").write_bytes(np.random.default_rng(2).bytes(1000))
    truncate(write_las(tmp_path / "short.las", points, np.ones(300), np.ones(300)), 500)
    write_npy(tmp_path / "words.npy", np.array([["a", "b", "c"]]))
    _, quarantined = decode_all(plan_units(manifest_for(tmp_path), make_fmt(), "ds"), make_fmt())
    assert {q.source: q.reason for q in quarantined} == {
        "short.las": "truncated",
        "cut.ply": "truncated",
        "noise.ply": "unreadable",
        "words.npy": "wrong_dtype",
    }


def test_two_files_with_the_same_sample_id_are_refused_at_plan_time(tmp_path):
    points = np.zeros((5, 3), dtype=np.float32)
    write_ply(tmp_path / "a.ply", points)
    write_npy(tmp_path / "a.npy", points)
    with pytest.raises(DataError, match=r"a\.npy and a\.ply"):
        plan_units(manifest_for(tmp_path), make_fmt(), "ds")


def test_decode_unit_runs_in_a_process_pool(tmp_path):
    write_kitti_tree(tmp_path, training=4)
    fmt = make_fmt()
    units = plan_units(manifest_for(tmp_path, "kitti", official_layout_files("kitti", tmp_path)), fmt, "ds")
    assert pickle.loads(pickle.dumps(decode_unit)) is decode_unit
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pooled = pool.starmap(decode_unit, [(u, fmt) for u in units])
    direct = [decode_unit(u, fmt) for u in units]
    for (a,), (b,) in zip(pooled, direct, strict=True):
        assert a.sample_id == b.sample_id
        np.testing.assert_array_equal(a.points, b.points)


# -------------------------------------------------------------------------------- official layouts
@pytest.mark.parametrize("kind", ["scannet", "redwood", "kitti", "waymo"])
def test_official_layout_with_a_missing_root_names_root_and_layout(tmp_path, kind):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as caught:
        official_layout_files(kind, missing)
    assert str(missing) in str(caught.value) and "expected" in str(caught.value)


def test_official_layout_with_no_matching_files_says_what_was_expected(tmp_path):
    write_kitti_bin(tmp_path / "velodyne" / "000000.bin", np.zeros((4, 4), np.float32))  # not under training/
    with pytest.raises(DataError, match=r"no kitti files found; expected training/velodyne/\*\.bin"):
        official_layout_files("kitti", tmp_path)


# ------------------------------------------------------------------------------ robustness sweep
def one_file_of_each_format(folder: Path) -> dict[Path, str]:
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 5, (300, 3)).astype(np.float32)
    colour = rng.integers(0, 256, (300, 3)).astype(np.uint8)
    depth, color = sens_frames(3)
    return {
        write_ply(folder / "a.ply", points, colour, np.arange(300)): "ply",
        write_pcd(folder / "a.pcd", points, colour, rng.random(300)): "pcd",
        write_pcd(folder / "c.pcd", points, compressed=True): "pcd",
        write_las(folder / "a.las", points.astype(np.float64), np.ones(300), np.ones(300)): "las",
        write_las(folder / "a.laz", points.astype(np.float64), np.ones(300), np.ones(300)): "las",
        write_npy(folder / "a.npy", points): "npy",
        write_sens(folder / "a.sens", depth, color, SENS_INTRINSICS): "scannet_sens",
        write_redwood_zip(folder / "a.zip", [plane_depth(480, 640, 1000)] * 2): "redwood",
    }


@pytest.mark.parametrize("fraction", [0.004, 0.05, 0.5, 0.97])
def test_a_binary_file_cut_anywhere_is_reported_as_truncated_never_raised(tmp_path, fraction):
    for path, fmt_name in one_file_of_each_format(tmp_path).items():
        data = path.read_bytes()
        cut = tmp_path / "cut" / path.name
        cut.parent.mkdir(exist_ok=True)
        cut.write_bytes(data[: max(1, int(len(data) * fraction))])
        results = decode_unit(Unit(cut.name, str(cut), fmt_name, "ds/cut"), make_fmt(frame_step=1))
        reasons = [r.reason for r in results if isinstance(r, QuarantineEntry)]
        assert reasons == ["truncated"], (path.name, fraction, results)


def test_files_with_flipped_bytes_never_make_decode_unit_raise(tmp_path):
    rng = np.random.default_rng(9)
    for path, fmt_name in one_file_of_each_format(tmp_path).items():
        data = path.read_bytes()
        for _ in range(6):
            damaged = np.frombuffer(data, dtype=np.uint8).copy()
            damaged[rng.integers(0, len(data), 8)] = rng.integers(0, 256, 8)
            path.write_bytes(damaged.tobytes())
            results = decode_unit(Unit(path.name, str(path), fmt_name, "ds/x"), make_fmt(frame_step=1))
            assert all(isinstance(r, Sample | QuarantineEntry) for r in results)


def test_the_built_in_scans_decode_without_quarantine():
    root = Path(__file__).resolve().parents[1] / "depthcontrast" / "builtin"
    units = plan_units(manifest_for(root, "builtin"), make_fmt(), "builtin")
    assert {u.format for u in units} == {"depth_png", "las"}
    samples, quarantined = decode_all(units, make_fmt())
    assert quarantined == [] and len(samples) == len(units)
    for sample in samples:
        expected = "rgb" if sample.sample_id.startswith("builtin/indoor/") else "intensity"
        assert list(sample.features) == [expected] and sample.labels.shape == (sample.num_points,)
