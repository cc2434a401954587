"""The per-file readers: geometry, features and labels, and the quarantine reason of broken files."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_writers import (
    gradient_rgb,
    kitti_sweep,
    plane_depth,
    png_bytes,
    truncate,
    write_kitti_bin,
    write_las,
    write_npy,
    write_pcd,
    write_ply,
)

from depthcontrast.data.depth_images import Intrinsics, decode_image, depth_to_sample
from depthcontrast.data.readers import (
    read_kitti_bin,
    read_las,
    read_npy,
    read_pcd,
    read_ply,
)
from depthcontrast.errors import SampleError

RNG = np.random.default_rng(7)
POINTS = RNG.uniform(-5, 5, (200, 3)).astype(np.float32)
RGB = RNG.integers(0, 256, (200, 3), dtype=np.uint8)
LABELS = RNG.integers(0, 9, 200).astype(np.int32)
INTENSITY = RNG.uniform(0, 1, 200).astype(np.float32)


def reason_of(read, path) -> str:
    with pytest.raises(SampleError) as caught:
        read(path, "ds/x")
    return caught.value.reason


# -------------------------------------------------------------------------------------------- PLY
@pytest.mark.parametrize("text", [False, True])
def test_ply_gives_xyz_rgb_and_labels(tmp_path, text):
    path = write_ply(tmp_path / "a.ply", POINTS, RGB, LABELS, text=text)
    sample = read_ply(path, "ds/a")
    assert sample.sample_id == "ds/a"
    assert sample.points.dtype == np.float32 and sample.points.shape == (200, 3)
    np.testing.assert_allclose(sample.points, POINTS, atol=1e-5)
    assert sample.features["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(sample.features["rgb"], RGB)
    assert sample.labels.dtype == np.int32
    np.testing.assert_array_equal(sample.labels, LABELS)


def test_ply_class_property_is_read_as_labels_and_missing_colour_gives_no_rgb(tmp_path):
    sample = read_ply(write_ply(tmp_path / "a.ply", POINTS, labels=LABELS, label_name="class"), "ds/a")
    np.testing.assert_array_equal(sample.labels, LABELS)
    assert "rgb" not in sample.features


def test_ply_keeps_nan_points_for_the_preprocess_checks(tmp_path):
    points = POINTS.copy()
    points[3] = np.nan
    sample = read_ply(write_ply(tmp_path / "a.ply", points), "ds/a")
    assert sample.num_points == 200 and np.isnan(sample.points[3]).all()


@pytest.mark.parametrize("text", [False, True])
def test_truncated_ply_is_reported_as_truncated(tmp_path, text):
    path = truncate(write_ply(tmp_path / "a.ply", POINTS, RGB, LABELS, text=text), 300)
    assert reason_of(read_ply, path) == "truncated"


def test_garbage_bytes_named_ply_are_unreadable(tmp_path):
    path = tmp_path / "a.ply"
    path.write_bytes(RNG.bytes(4000))
    assert reason_of(read_ply, path) == "unreadable"


def test_ply_without_xyz_is_wrong_dtype(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float u\nproperty float v\nend_header\n1 2\n")
    assert reason_of(read_ply, path) == "wrong_dtype"


# -------------------------------------------------------------------------------------------- PCD
@pytest.mark.parametrize(("ascii_text", "compressed"), [(False, False), (True, False), (False, True)])
def test_pcd_gives_xyz_rgb_and_intensity(tmp_path, ascii_text, compressed):
    path = write_pcd(tmp_path / "a.pcd", POINTS, RGB, INTENSITY, ascii_text=ascii_text, compressed=compressed)
    sample = read_pcd(path, "ds/a")
    np.testing.assert_allclose(sample.points, POINTS, atol=1e-4)
    np.testing.assert_array_equal(sample.features["rgb"], RGB)
    assert sample.features["intensity"].dtype == np.float32 and sample.features["intensity"].shape == (200, 1)
    np.testing.assert_allclose(sample.features["intensity"][:, 0], INTENSITY, atol=1e-4)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_pcd_is_reported_as_truncated(tmp_path, compressed):
    path = truncate(write_pcd(tmp_path / "a.pcd", POINTS, RGB, compressed=compressed), 100)
    assert reason_of(read_pcd, path) == "truncated"


def test_garbage_bytes_named_pcd_are_unreadable(tmp_path):
    path = tmp_path / "a.pcd"
    path.write_bytes(RNG.bytes(3000).replace(b"DATA", b"xxxx"))
    assert reason_of(read_pcd, path) == "unreadable"


# ---------------------------------------------------------------------------------------- LAS/LAZ
@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_and_laz_give_intensity_classification_and_local_xy(tmp_path, suffix):
    origin = np.array([637_000.25, 851_000.75, 0.0])
    points = (POINTS.astype(np.float64) + 5.0).round(3) + origin
    classes = LABELS % 7
    path = write_las(
        tmp_path / f"tile{suffix}", points, (INTENSITY * 1000).round(), classes, offset=(637_000, 851_000, 0)
    )
    sample = read_las(path, "ds/tile")
    corner = np.floor(points.min(axis=0))
    corner[2] = 0.0
    np.testing.assert_allclose(sample.points, points - corner, atol=2e-3)
    np.testing.assert_array_equal(sample.origin, corner)  # kept: points + origin are the file's coordinates
    assert sample.points.dtype == np.float64  # float32 comes after the shift (coordinates.to_float32_metres)
    assert sample.features["intensity"].dtype == np.float32 and sample.features["intensity"].shape == (200, 1)
    np.testing.assert_array_equal(sample.features["intensity"][:, 0], (INTENSITY * 1000).round())
    assert sample.labels.dtype == np.int32
    np.testing.assert_array_equal(sample.labels, classes)


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_truncated_las_and_laz_are_reported_as_truncated(tmp_path, suffix):
    path = write_las(tmp_path / f"tile{suffix}", POINTS.astype(np.float64) + 10, INTENSITY * 100, LABELS % 7)
    truncate(path, path.stat().st_size // 3)
    assert reason_of(read_las, path) == "truncated"


def test_garbage_bytes_named_las_are_unreadable(tmp_path):
    path = tmp_path / "a.las"
    path.write_bytes(b"NOTLAS" + RNG.bytes(2000))
    assert reason_of(read_las, path) == "unreadable"


# -------------------------------------------------------------------------------------------- NPY
def test_npy_xyz_intensity_and_seed_style_rgb_columns(tmp_path):
    xyz = read_npy(write_npy(tmp_path / "a.npy", POINTS.astype(np.float64)), "ds/a")
    np.testing.assert_allclose(xyz.points, POINTS)
    assert xyz.features == {}
    with_intensity = read_npy(write_npy(tmp_path / "b.npy", np.c_[POINTS, INTENSITY]), "ds/b")
    np.testing.assert_allclose(with_intensity.features["intensity"][:, 0], INTENSITY)
    seed_rgb = read_npy(write_npy(tmp_path / "c.npy", np.c_[POINTS, RGB / 255.0]), "ds/c")
    assert seed_rgb.features["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(seed_rgb.features["rgb"], RGB)


@pytest.mark.parametrize(
    "array",
    [
        np.array([["1", "2", "3"]] * 5),
        np.ones((5, 3), dtype=np.complex64),
        np.ones(12, dtype=np.float32),
        np.ones((5, 5), dtype=np.float32),
    ],
    ids=["strings", "complex", "1-D", "5-columns"],
)
def test_npy_that_cannot_hold_points_is_wrong_dtype(tmp_path, array):
    assert reason_of(read_npy, write_npy(tmp_path / "a.npy", array)) == "wrong_dtype"


def test_npy_of_objects_is_wrong_dtype_and_never_unpickled(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    assert reason_of(read_npy, path) == "wrong_dtype"


def test_truncated_npy_is_truncated_and_garbage_npy_is_unreadable(tmp_path):
    assert reason_of(read_npy, truncate(write_npy(tmp_path / "a.npy", POINTS), 40)) == "truncated"
    garbage = tmp_path / "b.npy"
    garbage.write_bytes(RNG.bytes(500))
    assert reason_of(read_npy, garbage) == "unreadable"


# ------------------------------------------------------------------------------------------ KITTI
def test_kitti_bin_gives_xyz_and_reflectance(tmp_path):
    sweep = kitti_sweep(300)
    sample = read_kitti_bin(write_kitti_bin(tmp_path / "000000.bin", sweep), "ds/000000")
    np.testing.assert_array_equal(sample.points, sweep[:, :3])
    np.testing.assert_array_equal(sample.features["intensity"], sweep[:, 3:4])


def test_kitti_bin_whose_size_is_not_whole_points_is_truncated(tmp_path):
    path = truncate(write_kitti_bin(tmp_path / "000000.bin", kitti_sweep(300)), 6)
    assert reason_of(read_kitti_bin, path) == "truncated"


# ---------------------------------------------------------------------------------- depth images
def test_fronto_parallel_plane_at_2m_back_projects_through_the_intrinsics():
    intrinsics = Intrinsics(fx=50.0, fy=40.0, cx=9.5, cy=7.5)
    sample = depth_to_sample("ds/f", plane_depth(16, 20, 2000), intrinsics, depth_scale=1000.0)
    assert sample.points.dtype == np.float32 and sample.points.shape == (16 * 20, 3)
    assert np.all(sample.points[:, 2] == 2.0)
    rows, cols = np.mgrid[0:16, 0:20]
    np.testing.assert_allclose(sample.points[:, 0], ((cols.ravel() - 9.5) * 2.0 / 50.0), rtol=1e-6)
    np.testing.assert_allclose(sample.points[:, 1], ((rows.ravel() - 7.5) * 2.0 / 40.0), rtol=1e-6)


def test_zero_depth_is_no_return_and_max_depth_drops_far_points():
    depth = plane_depth(10, 10, 1500)
    depth[:, :3] = 0
    depth[0, 5:] = 9000
    intrinsics = Intrinsics(10, 10, 4.5, 4.5)
    assert depth_to_sample("ds/f", depth, intrinsics, 1000.0).num_points == 70
    near = depth_to_sample("ds/f", depth, intrinsics, 1000.0, max_depth_m=5.0)
    assert near.num_points == 65 and near.points[:, 2].max() == 1.5


def test_depth_colour_is_resized_to_depth_and_labels_follow_the_pixels():
    depth = plane_depth(12, 16, 1000)
    depth[0, 0] = 0
    labels = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    sample = depth_to_sample(
        "ds/f", depth, Intrinsics(20, 20, 7.5, 5.5), 1000.0, color=gradient_rgb(24, 32), labels=labels
    )
    assert sample.features["rgb"].shape == (12 * 16 - 1, 3) and sample.features["rgb"].dtype == np.uint8
    assert sample.labels.dtype == np.int32
    np.testing.assert_array_equal(sample.labels, np.arange(1, 12 * 16))


def test_colour_depth_image_is_wrong_dtype():
    with pytest.raises(SampleError) as caught:
        depth_to_sample("ds/f", gradient_rgb(4, 4), Intrinsics(1, 1, 1, 1), 1000.0)
    assert caught.value.reason == "wrong_dtype"


def test_png_cut_before_its_end_is_truncated_and_noise_is_unreadable():
    data = png_bytes(plane_depth(30, 30, 1234))
    np.testing.assert_array_equal(decode_image(data, "ok.png"), plane_depth(30, 30, 1234))
    with pytest.raises(SampleError) as caught:
        decode_image(data[:-20], "cut.png")
    assert caught.value.reason == "truncated"
    with pytest.raises(SampleError) as caught:
        decode_image(RNG.bytes(300), "noise.png")
    assert caught.value.reason == "unreadable"
