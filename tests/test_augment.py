"""The original's point augmentations: each transform's invariants, the presets, building and two-view sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from depthcontrast.data.augment import (
    PRESETS,
    Compose,
    TransformSpec,
    build_transforms,
    preset_transforms,
    two_views,
)
from depthcontrast.data.geometric import (
    RandomCuboid,
    RandomCuboidLidar,
    RandomDrop,
    RandomFlip,
    RandomFlipLidar,
    RandomRotateAll,
    RandomRotateLidar,
    RandomScale,
    RandomScaleLidar,
)
from depthcontrast.data.point_cloud import PointCloud
from depthcontrast.data.resample import Multiscale, Resample, ResampleLidar
from depthcontrast.errors import ConfigError, DataError, SampleError


def tagged(xyz: np.ndarray) -> PointCloud:
    """A cloud whose extras record each point's original row, to check alignment after a transform."""
    return PointCloud(xyz, {"row": np.arange(len(xyz)), "rgb": (np.arange(len(xyz))[:, None] % 256) * [1, 1, 1]})


def assert_aligned(out: PointCloud, source: PointCloud) -> None:
    rows = out.extras["row"]
    np.testing.assert_array_equal(out.extras["rgb"], source.extras["rgb"][rows])
    assert len(out.xyz) == len(rows)


def uniform_cloud(count: int = 5000, seed: int = 0) -> PointCloud:
    rng = np.random.default_rng(seed)
    return tagged((rng.random((count, 3)) * [4.0, 3.0, 2.5]).astype(np.float32))


def grid_cloud(side: int = 11) -> PointCloud:
    """Integer grid 0..side-1 per axis (float64), so box bounds fall exactly on grid points."""
    axis = np.arange(side, dtype=np.float64)
    return tagged(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3))


def box_masks(xyz: np.ndarray, half: float, strict: bool) -> np.ndarray:
    """[P candidates, P points]: points within `half` (per axis) of each candidate centre."""
    offset = np.abs(xyz[None, :, :] - xyz[:, None, :])
    return np.all(offset < half if strict else offset <= half, axis=2)


# ---- random_cuboid ---------------------------------------------------------------------------


def test_random_cuboid_keeps_exactly_the_points_of_an_inclusive_box_around_a_cloud_point():
    cloud = grid_cloud()  # extent 10 → crop 0.2 gives a half-size of exactly 1
    crop = RandomCuboid(crop=0.2, randcrop=0.2, aspect=0.0, npoints=0)
    candidates = box_masks(cloud.xyz, 1.0, strict=False)
    for seed in range(5):
        out = crop(cloud, np.random.default_rng(seed))
        kept = np.zeros(len(cloud), dtype=bool)
        kept[out.extras["row"]] = True
        assert (candidates == kept).all(axis=1).any(), "kept set is not an inclusive box around a point"
        np.testing.assert_array_equal(out.xyz, cloud.xyz[out.extras["row"]])
        assert_aligned(out, cloud)


def test_random_cuboid_box_is_at_most_randcrop_of_the_extent_and_whole():
    cloud = uniform_cloud()
    extent = cloud.xyz.max(0) - cloud.xyz.min(0)
    for seed in range(10):
        out = RandomCuboid(crop=0.5, randcrop=0.6, npoints=100)(cloud, np.random.default_rng(seed))
        low, high = out.xyz.min(0), out.xyz.max(0)
        assert np.all(high - low <= extent * 0.6 + 1e-6)
        inside_bbox = np.all((cloud.xyz >= low) & (cloud.xyz <= high), axis=1)
        assert np.count_nonzero(inside_bbox) == len(out), "a point inside the crop box was dropped"


def test_random_cuboid_recentres_until_the_crop_holds_more_than_npoints():
    rng = np.random.default_rng(1)
    dense = rng.random((2000, 3)) * 0.1  # any box centred here holds all 2000
    sparse = 5.0 + rng.random((2000, 3)) * 45.0  # a box centred here holds a few hundred at most
    cloud = tagged(np.concatenate([dense, sparse]))
    crop = RandomCuboid(crop=0.5, randcrop=0.5, npoints=1000)
    counts = [len(crop(cloud, np.random.default_rng(seed))) for seed in range(20)]
    assert min(counts) > 1000


def test_random_cuboid_gives_up_after_max_tries_with_a_non_empty_crop():
    cloud = uniform_cloud(500)
    out = RandomCuboid(npoints=10**6)(cloud, np.random.default_rng(0))
    assert 1 <= len(out) <= len(cloud)


def test_random_cuboid_fractions_pass_the_aspect_test():
    crop = RandomCuboid(crop=0.1, randcrop=1.0, aspect=0.9)
    for seed in range(200):
        fractions = crop._fractions(np.random.default_rng(seed))
        assert np.all((fractions >= 0.1) & (fractions <= 1.0))
        ratios = [
            min(fractions[a], fractions[b]) / max(fractions[a], fractions[b]) for a, b in ((0, 1), (0, 2), (1, 2))
        ]
        assert max(ratios) >= 0.9


def test_random_cuboid_lidar_crops_in_xy_and_keeps_all_heights():
    rng = np.random.default_rng(2)
    xyz = rng.random((4000, 3)) * [100.0, 100.0, 4.0]
    cloud = tagged(xyz)
    for seed in range(5):
        out = RandomCuboidLidar(crop=0.5, randcrop=0.5, npoints=200)(cloud, np.random.default_rng(seed))
        low, high = out.xyz[:, :2].min(0), out.xyz[:, :2].max(0)
        in_column = np.all((xyz[:, :2] >= low) & (xyz[:, :2] <= high), axis=1)
        assert np.count_nonzero(in_column) == len(out), "points above/below the xy box must be kept"
        assert np.all(high - low <= 50.0 + 1e-9)
        assert len(out) > 200


# ---- random_drop -----------------------------------------------------------------------------


def test_random_drop_removes_exactly_the_points_strictly_inside_the_cube():
    cloud = grid_cloud()  # half-size exactly 1: neighbours on the cube's faces are kept
    out = RandomDrop(crop=0.2)(cloud, np.random.default_rng(0))
    assert len(out) == len(cloud) - 1
    assert_aligned(out, cloud)


def test_random_drop_matches_a_strict_cube_around_some_cloud_point():
    cloud = uniform_cloud(1500, seed=3)
    half = (cloud.xyz.max(0) - cloud.xyz.min(0)) * 0.2 / 2
    offset = np.abs(cloud.xyz[None, :, :] - cloud.xyz[:, None, :])
    candidates = np.all(offset < half, axis=2)
    for seed in range(5):
        out = RandomDrop()(cloud, np.random.default_rng(seed))
        removed = np.ones(len(cloud), dtype=bool)
        removed[out.extras["row"]] = False
        assert (candidates == removed).all(axis=1).any()
        assert 0 < np.count_nonzero(removed) < len(cloud)


# ---- multiscale, resample --------------------------------------------------------------------


def test_multiscale_resamples_to_one_of_the_sizes_and_uses_them_all():
    cloud = uniform_cloud(700)
    seen = set()
    for seed in range(40):
        out = Multiscale(sizes=[100, 500, 1000])(cloud, np.random.default_rng(seed))
        assert len(out) in (100, 500, 1000)
        if len(out) <= len(cloud):
            assert len(np.unique(out.extras["row"])) == len(out), "no repeats when there are enough points"
        assert_aligned(out, cloud)
        seen.add(len(out))
    assert seen == {100, 500, 1000}


@pytest.mark.parametrize("count", [50, 300, 1000])
def test_resample_returns_exactly_npoints_with_repeats_only_when_short(count):
    cloud = uniform_cloud(count)
    out = Resample(npoints=300)(cloud, np.random.default_rng(0))
    assert len(out) == 300
    rows = np.unique(out.extras["row"])
    if count >= 300:
        assert len(rows) == 300, "without replacement when there are enough points"
    else:
        assert rows.max() < count
    np.testing.assert_array_equal(out.xyz, cloud.xyz[out.extras["row"]])
    assert_aligned(out, cloud)


# ---- flips, rotations, scales ----------------------------------------------------------------


def test_random_flip_negates_x_and_y_independently_and_never_z():
    cloud = uniform_cloud(50)
    patterns = set()
    for seed in range(40):
        out = RandomFlip()(cloud, np.random.default_rng(seed))
        signs = tuple(np.sign(out.xyz[0] / cloud.xyz[0]).astype(int))
        np.testing.assert_array_equal(out.xyz, cloud.xyz * signs)
        assert signs[2] == 1
        patterns.add(signs[:2])
    assert patterns == {(1, 1), (1, -1), (-1, 1), (-1, -1)}


def test_random_flip_lidar_negates_only_y():
    cloud = uniform_cloud(50)
    flips = set()
    for seed in range(30):
        out = RandomFlipLidar()(cloud, np.random.default_rng(seed))
        np.testing.assert_array_equal(out.xyz[:, [0, 2]], cloud.xyz[:, [0, 2]])
        flips.add(bool(np.all(out.xyz[:, 1] == -cloud.xyz[:, 1])))
    assert flips == {True, False}


def rotation_axis(before: np.ndarray, after: np.ndarray) -> int:
    """Which coordinate a rotation about a coordinate axis left unchanged."""
    return int(np.argmin(np.abs(after - before).max(axis=0)))


def test_random_rotate_all_preserves_norms_and_is_a_proper_rotation():
    cloud = uniform_cloud(200)
    xyz = cloud.xyz.astype(np.float64)
    for seed in range(10):
        out = RandomRotateAll()(PointCloud(xyz), np.random.default_rng(seed)).xyz
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(xyz, axis=1), rtol=1e-12)
        rot, *_ = np.linalg.lstsq(xyz, out, rcond=None)
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-10)
        assert np.linalg.det(rot) == pytest.approx(1.0)


@pytest.mark.parametrize(("uniform_axis", "expected"), [(False, (0.33, 0.44, 0.23)), (True, (1 / 3, 1 / 3, 1 / 3))])
def test_random_rotate_all_axis_frequencies(uniform_axis, expected):
    xyz = np.array([[1.0, 2.0, 3.0], [-2.0, 0.5, 1.0]])
    rng = np.random.default_rng(0)
    rotate = RandomRotateAll(uniform_axis=uniform_axis)
    draws = 3000
    axes = [rotation_axis(xyz, rotate(PointCloud(xyz), rng).xyz) for _ in range(draws)]
    frequencies = np.bincount(axes, minlength=3) / draws
    np.testing.assert_allclose(frequencies, expected, atol=0.035)


def test_random_rotate_lidar_turns_about_z_by_at_most_a_quarter_turn():
    xyz = np.array([[10.0, 0.0, 1.5], [0.0, 5.0, -1.0]])
    angles = []
    for seed in range(200):
        out = RandomRotateLidar()(PointCloud(xyz), np.random.default_rng(seed)).xyz
        np.testing.assert_array_equal(out[:, 2], xyz[:, 2])
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(xyz, axis=1))
        angles.append(math.atan2(out[0, 1], out[0, 0]))
    assert max(np.abs(angles)) <= math.pi / 4 + 1e-12
    assert max(np.abs(angles)) > math.pi / 4 * 0.9, "the original's range is ±45°, not ±5°"


@pytest.mark.parametrize(("transform", "low", "high"), [(RandomScale(), 0.8, 1.2), (RandomScaleLidar(), 0.95, 1.05)])
def test_random_scale_is_isotropic_and_within_range(transform, low, high):
    cloud = uniform_cloud(100)
    factors = []
    for seed in range(100):
        out = transform(cloud, np.random.default_rng(seed))
        ratio = out.xyz / cloud.xyz
        np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-6)
        assert out.xyz.dtype == cloud.xyz.dtype
        factors.append(ratio[0, 0])
    assert low - 1e-6 <= min(factors) and max(factors) <= high + 1e-6
    assert max(factors) - min(factors) > (high - low) * 0.8


# ---- resample_lidar --------------------------------------------------------------------------


def lidar_cloud(near: int, far: int, seed: int = 0) -> PointCloud:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(near + far, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ranges = np.concatenate([rng.uniform(1.0, 39.0, near), rng.uniform(40.0, 70.0, far)])
    return tagged(directions * ranges[:, None])


def test_resample_lidar_keeps_every_far_point_when_downsampling():
    cloud = lidar_cloud(near=3000, far=150)
    out = ResampleLidar(npoints=1000)(cloud, np.random.default_rng(0))
    assert len(out) == 1000
    rows = out.extras["row"]
    assert len(np.unique(rows)) == 1000
    assert set(range(3000, 3150)) <= set(rows.tolist())
    assert_aligned(out, cloud)


def test_resample_lidar_with_more_far_points_than_asked_takes_a_random_subset():
    cloud = lidar_cloud(near=100, far=900)
    out = ResampleLidar(npoints=500)(cloud, np.random.default_rng(0))
    assert len(out) == 500 and len(np.unique(out.extras["row"])) == 500


def test_resample_lidar_pads_a_small_cloud_keeping_every_point():
    cloud = lidar_cloud(near=300, far=0)
    out = ResampleLidar(npoints=1000)(cloud, np.random.default_rng(0))
    rows = out.extras["row"]
    assert len(rows) == 1000 and set(rows.tolist()) == set(range(300))
    assert np.any(np.diff(rows) < 0), "the output is shuffled"


# ---- presets, config, views ------------------------------------------------------------------


def defaults_of(preset: str) -> tuple[TransformSpec, ...]:
    return tuple(TransformSpec(name) for name in PRESETS[preset])


def test_the_presets_with_their_defaults_make_the_original_view_sizes():
    rng = np.random.default_rng(0)
    room = tagged((rng.random((60000, 3)) * [6.0, 5.0, 3.0]).astype(np.float32))
    view = build_transforms(defaults_of("indoor"))(room, rng)
    assert view.xyz.shape == (20000, 3)
    assert_aligned(view, room)
    sweep = lidar_cloud(near=30000, far=5000)
    view = build_transforms(defaults_of("lidar"))(sweep, rng)
    assert view.xyz.shape == (16384, 3)


def test_a_preset_takes_the_run_overrides_and_resamples_to_points_per_view():
    specs = preset_transforms("indoor", {"random_cuboid": {"npoints": 300}, "resample": {"npoints": 5}}, 256)
    assert [spec.name for spec in specs] == list(PRESETS["indoor"])
    assert specs[0].params == {"npoints": 300}
    assert specs[-1].params == {"npoints": 256}  # points_per_view wins over the resampler's own npoints
    assert all(spec.params == {} for spec in specs[1:-1])
    with pytest.raises(ConfigError, match=r"augmentation_overrides: \['random_flip'\] not in the lidar preset"):
        preset_transforms("lidar", {"random_flip": {}}, 256)


def small_indoor_pipeline() -> Compose:
    overrides = {"random_cuboid": {"npoints": 300}, "multiscale": {"sizes": [500, 1000]}}
    return build_transforms(preset_transforms("indoor", overrides, 256))


def test_two_views_differ_and_are_reproducible_from_the_seed():
    cloud = uniform_cloud(3000)
    before = cloud.xyz.copy()
    pipeline = small_indoor_pipeline()
    a1, b1 = two_views(cloud, pipeline, np.random.default_rng(7))
    a2, b2 = two_views(cloud, pipeline, np.random.default_rng(7))
    a3, _ = two_views(cloud, pipeline, np.random.default_rng(8))
    assert a1.xyz.shape == b1.xyz.shape == (256, 3)
    np.testing.assert_array_equal(a1.xyz, a2.xyz)
    np.testing.assert_array_equal(b1.extras["row"], b2.extras["row"])
    assert not np.array_equal(a1.xyz, b1.xyz)
    assert not np.array_equal(a1.xyz, a3.xyz)
    np.testing.assert_array_equal(cloud.xyz, before)  # the input is never modified
    assert_aligned(a1, cloud)


def test_two_views_accepts_a_plain_xyz_array():
    xyz = np.random.default_rng(0).random((2000, 3))
    a, b = two_views(xyz, small_indoor_pipeline(), np.random.default_rng(0))
    assert a.xyz.shape == b.xyz.shape == (256, 3)


def test_inputs_over_max_input_points_are_cut_to_a_random_subset():
    cloud = uniform_cloud(1000)
    out = Compose((), max_input_points=100)(cloud, np.random.default_rng(0))
    assert len(out) == 100 and len(np.unique(out.extras["row"])) == 100


def test_an_empty_cloud_is_reported_as_empty():
    with pytest.raises(SampleError) as info:
        small_indoor_pipeline()(PointCloud(np.zeros((0, 3))), np.random.default_rng(0))
    assert info.value.reason == "empty"


def test_misaligned_extras_are_rejected():
    with pytest.raises(DataError, match="'rgb' has 3 rows for 4 points"):
        PointCloud(np.zeros((4, 3)), {"rgb": np.zeros((3, 3))})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TransformSpec("random_crop"), "unknown augmentation 'random_crop'"),
        (TransformSpec("random_cuboid", {"crop": 0.8, "randcrop": 0.5}), "crop ≤ randcrop"),
        (TransformSpec("random_scale", {"low": 1.2, "high": 0.8}), "low ≤ high"),
        (TransformSpec("multiscale", {"sizes": []}), "non-empty list"),
        (TransformSpec("random_drop", {"crop": 1.5}), r"crop must be in \(0, 1\]"),
    ],
)
def test_bad_augmentation_values_are_a_config_error_naming_the_augmentation(spec, message):
    # (their types and names are the schema's to check: tests/test_config.py)
    with pytest.raises(ConfigError, match=message):
        build_transforms((spec,))
