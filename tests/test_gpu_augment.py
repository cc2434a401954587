"""The batched device augmentations (augment_on: gpu) against the numpy ones: per transform and per preset, the
same distributions (two-sample KS and chi-square tests on fixed seeds, so they are deterministic; ALPHA is the
level at which a match is accepted, and a deliberately wrong parameter must fall below POWER_ALPHA), plus
shapes, features that follow their points, seeding, errors, the dataset's cut clouds and a trainer run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from depthcontrast.config import validate_config
from depthcontrast.data.augment import (
    TRANSFORMS,
    Compose,
    TransformSpec,
    build_transform,
    build_transforms,
    preset_transforms,
    two_views,
)
from depthcontrast.data.geometric import _rotation
from depthcontrast.data.gpu_augment import (
    DEVICE_TRANSFORMS,
    Clouds,
    DeviceViews,
    crop_fractions,
    rotations,
    view_generator,
)
from depthcontrast.data.point_cloud import PointCloud
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.views import CLOUDS, PointViews, TwoViewDataset, VoxelViews, collate_views
from depthcontrast.data.voxelize import VoxelGrid, Voxels
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.launch import WorldInfo
from depthcontrast.train import Trainer
from tests.test_train import TINY_RUN, shards  # noqa: F401  (shards: the module's fixture, reused)

ALPHA = 1e-3  # a CPU/device comparison passes with p above this
POWER_ALPHA = 1e-6  # a deliberately wrong parameter must be rejected with p below this
DRAWS = 400  # views per side in the per-transform comparisons
KS_SERIES_FROM = 0.2  # below this λ the Kolmogorov series does not converge; its value there is 1 − 1e-10


# ----------------------------------------------------------------------------------- statistics
def ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov p-value (asymptotic, with Stephens' small-sample correction)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    d = np.abs(cdf_a - cdf_b).max()
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < KS_SERIES_FROM:
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0.0, 1.0))


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Chi-square p-value (Wilson–Hilferty) of `observed` counts (a 1-D sample, or rows of a contingency table)
    against `expected` counts of the same shape; `dof` = cells − rows (one constraint per row) or, for a table,
    (rows − 1)(columns − 1)."""
    observed, expected = np.atleast_2d(observed).astype(float), np.atleast_2d(expected).astype(float)
    used = expected.sum(0) > 0
    observed, expected = observed[:, used], expected[:, used]
    stat = float(((observed - expected) ** 2 / expected).sum())
    rows, cols = observed.shape
    dof = (rows - 1) * (cols - 1) if rows > 1 else cols - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def homogeneity_pvalue(a: np.ndarray, b: np.ndarray, categories: int) -> float:
    """Chi-square test that two samples of category labels 0..categories-1 come from one distribution."""
    table = np.stack([np.bincount(a, minlength=categories), np.bincount(b, minlength=categories)])
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return chi2_pvalue(table, expected)


# ----------------------------------------------------------------------------------- fixtures
def uniform_xyz(count: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((count, 3)) * [4.0, 3.0, 2.5]).astype(np.float32)


def clustered_xyz(seed: int = 1) -> np.ndarray:
    """A dense blob and a sparse cloud: crops centred in the sparse part hold too few points and are re-centred."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random((2000, 3)) * 0.1, 5.0 + rng.random((2000, 3)) * 45.0]).astype(np.float32)


def lidar_xyz(near: int, far: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(near + far, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ranges = np.concatenate([rng.uniform(1.0, 39.0, near), rng.uniform(40.0, 70.0, far)])
    return (directions * ranges[:, None]).astype(np.float32)


def with_rows(xyz: np.ndarray) -> np.ndarray:
    """xyz plus a feature column holding each point's row (exact in float32), to follow points through transforms."""
    return np.concatenate([xyz, np.arange(len(xyz), dtype=np.float32)[:, None]], axis=1)


def device_run(name: str, params: dict, xyz: np.ndarray, copies: int = DRAWS, seed: int = 0) -> Clouds:
    """The batched transform on `copies` copies of the cloud (with its rows as a feature column)."""
    points = torch.from_numpy(with_rows(xyz))[None].repeat(copies, 1, 1)
    clouds = Clouds(points, torch.ones(points.shape[:2], dtype=torch.bool))
    generator = torch.Generator().manual_seed(seed)
    return DEVICE_TRANSFORMS[name](build_transform(TransformSpec(name, params)), clouds, generator)


def cpu_run(name: str, params: dict, xyz: np.ndarray, draws: int = DRAWS) -> list[PointCloud]:
    """The numpy transform on the cloud, once per seed 0..draws-1."""
    transform = build_transform(TransformSpec(name, params))
    cloud = PointCloud(xyz, {"row": np.arange(len(xyz))})
    return [transform(cloud, np.random.default_rng(seed)) for seed in range(draws)]


def device_rows(clouds: Clouds) -> list[np.ndarray]:
    """Each output cloud's source rows (its members, in order)."""
    rows = clouds.points[..., 3].long()
    return [rows[i][clouds.mask[i]].numpy() for i in range(len(rows))]


def device_counts(clouds: Clouds) -> np.ndarray:
    return clouds.mask.sum(1).numpy()


# ----------------------------------------------------------------------------------- the table
def test_every_cpu_transform_has_a_batched_twin():
    assert set(DEVICE_TRANSFORMS) == set(TRANSFORMS)


# ----------------------------------------------------------------------------------- flips, rotations, scales
def flip_signs(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """[N, 3] the sign each axis was multiplied by (before: [P, 3] with no zero coordinate, after: [N, P, 3])."""
    return np.sign(after[:, 0] / before[0]).astype(int)


@pytest.mark.parametrize(("name", "flippable"), [("random_flip", (True, True)), ("random_flip_lidar", (False, True))])
def test_flips_negate_x_and_y_independently_with_probability_one_half_as_on_the_cpu(name, flippable):
    xyz = uniform_xyz(4) + 1.0
    draws = 4000
    out = device_run(name, {}, xyz, copies=draws)
    signs = flip_signs(xyz, out.xyz.numpy())
    np.testing.assert_array_equal(out.xyz.numpy(), xyz[None] * signs[:, None])  # a sign per axis, nothing else
    assert (signs[:, 2] == 1).all()
    cpu = np.array([flip_signs(xyz, view.xyz[None])[0] for view in cpu_run(name, {}, xyz, draws)])
    for axis, enabled in enumerate(flippable):
        if not enabled:
            assert (signs[:, axis] == 1).all()
    patterns = lambda s: (s[:, 0] < 0) * 2 + (s[:, 1] < 0)  # noqa: E731
    assert homogeneity_pvalue(patterns(signs), patterns(cpu), 4) > ALPHA
    expected = np.bincount(patterns(cpu), minlength=4) > 0  # the patterns the CPU makes, each equally likely
    counts = np.bincount(patterns(signs), minlength=4)
    assert chi2_pvalue(counts, expected * draws / expected.sum()) > ALPHA


def rotation_axis_and_angle(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coordinate axis [N] and angle [N] of rotations [N, 3, 3] about a coordinate axis (the one whose diagonal
    entry is exactly 1: the matrices hold exact zeros and ones there; a near-zero angle may name another axis)."""
    axis = np.argmax(np.diagonal(matrices, axis1=1, axis2=2) == 1, axis=1)
    sine = {0: (2, 1), 1: (0, 2), 2: (1, 0)}  # where sin(angle) sits, for each axis
    cosine = {0: (1, 1), 1: (0, 0), 2: (0, 0)}
    angle = np.array([math.atan2(m[sine[a]], m[cosine[a]]) for m, a in zip(matrices, axis, strict=True)])
    return axis, angle


def applied_rotations(name: str, params: dict, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """(device, cpu) rotation matrices [draws, 3, 3], read off the identity cloud (rows e_x, e_y, e_z: out = Rᵀ)."""
    eye = np.eye(3, dtype=np.float64)
    device = device_run(name, params, eye.astype(np.float32), copies=draws).xyz.numpy().astype(np.float64)
    transform = build_transform(TransformSpec(name, params))
    cpu = np.stack([transform(PointCloud(eye), np.random.default_rng(seed)).xyz for seed in range(draws)])
    return device.transpose(0, 2, 1), cpu.transpose(0, 2, 1)


@pytest.mark.parametrize(
    ("uniform_axis", "probabilities"), [(False, (0.33, 0.67 * 0.66, 0.67 * 0.34)), (True, (1 / 3, 1 / 3, 1 / 3))]
)
def test_random_rotate_all_draws_the_cpu_axis_frequencies_and_uniform_angles(uniform_axis, probabilities):
    draws = 3000
    device, cpu = applied_rotations("random_rotate_all", {"uniform_axis": uniform_axis}, draws)
    np.testing.assert_allclose(device @ device.transpose(0, 2, 1), np.broadcast_to(np.eye(3), device.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(device), 1.0, atol=1e-6)
    axis, angle = rotation_axis_and_angle(device)
    cpu_axis, cpu_angle = rotation_axis_and_angle(cpu)
    assert homogeneity_pvalue(axis, cpu_axis, 3) > ALPHA
    assert chi2_pvalue(np.bincount(axis, minlength=3), np.array(probabilities) * draws) > ALPHA
    assert ks_pvalue(angle, cpu_angle) > ALPHA
    assert ks_pvalue(angle, np.linspace(-math.pi, math.pi, draws)) > ALPHA


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rotation_matrices_are_the_cpu_ones(axis):
    angles = np.linspace(-math.pi, math.pi, 7)
    batch = rotations(torch.full((len(angles),), axis), torch.from_numpy(angles)).numpy()
    for matrix, angle in zip(batch, angles, strict=True):
        np.testing.assert_allclose(matrix, _rotation(axis, angle, np.dtype(np.float64)), atol=1e-15)


def test_random_rotate_lidar_turns_about_z_by_the_cpu_angles():
    draws = 2000
    device, cpu = applied_rotations("random_rotate_lidar", {}, draws)
    np.testing.assert_array_equal(device[:, 2], np.broadcast_to([0.0, 0.0, 1.0], (draws, 3)))  # about z
    np.testing.assert_array_equal(device[:, :, 2], np.broadcast_to([0.0, 0.0, 1.0], (draws, 3)))
    angle, cpu_angle = (np.arctan2(m[:, 1, 0], m[:, 0, 0]) for m in (device, cpu))
    assert np.abs(angle).max() <= math.pi / 4 + 1e-6
    assert ks_pvalue(angle, cpu_angle) > ALPHA


def scale_factors(name: str, params: dict, draws: int = 2000) -> np.ndarray:
    xyz = uniform_xyz(8) + 1.0
    out = device_run(name, params, xyz, copies=draws).xyz.numpy()
    ratio = out / xyz[None]
    np.testing.assert_allclose(ratio, ratio[:, :1, :1].repeat(8, 1).repeat(3, 2), rtol=1e-6)  # isotropic
    return ratio[:, 0, 0]


def cpu_scale_factors(name: str, draws: int = 2000) -> np.ndarray:
    xyz = uniform_xyz(8) + 1.0
    return np.array([view.xyz[0, 0] / xyz[0, 0] for view in cpu_run(name, {}, xyz, draws)])


@pytest.mark.parametrize(("name", "low", "high"), [("random_scale", 0.8, 1.2), ("random_scale_lidar", 0.95, 1.05)])
def test_random_scale_factors_have_the_cpu_distribution(name, low, high):
    factors = scale_factors(name, {})
    assert low - 1e-6 <= factors.min() and factors.max() <= high + 1e-6
    assert ks_pvalue(factors, cpu_scale_factors(name)) > ALPHA


def test_a_doubled_scale_range_is_detected_by_the_same_check():
    wrong = scale_factors("random_scale", {"low": 0.6, "high": 1.4})
    assert ks_pvalue(wrong, cpu_scale_factors("random_scale")) < POWER_ALPHA


# ----------------------------------------------------------------------------------- crops and drops
def test_crop_fractions_pass_the_aspect_test_with_the_cpu_distribution():
    params = build_transform(TransformSpec("random_cuboid", {"crop": 0.1, "randcrop": 1.0, "aspect": 0.9}))
    device = crop_fractions(params, 2000, torch.zeros(1), torch.Generator().manual_seed(0)).numpy()
    cpu = np.stack([params._fractions(np.random.default_rng(seed)) for seed in range(2000)])
    ratio = lambda f: np.max([np.minimum(f[:, a], f[:, b]) / np.maximum(f[:, a], f[:, b])  # noqa: E731
                              for a, b in ((0, 1), (0, 2), (1, 2))], axis=0)  # fmt: skip
    assert (ratio(device) >= 0.9).all() and ((device >= 0.1) & (device <= 1.0)).all()
    for axis in range(3):
        assert ks_pvalue(device[:, axis], cpu[:, axis]) > ALPHA


def crop_statistics(views: list[np.ndarray], xyz: np.ndarray) -> dict[str, np.ndarray]:
    """Per view: points kept, and the kept extent per axis as a fraction of the cloud's."""
    extent = xyz.max(0) - xyz.min(0)
    spans = np.array([(xyz[rows].max(0) - xyz[rows].min(0)) / extent for rows in views])
    return {"kept": np.array([len(rows) for rows in views]), **{f"span{a}": spans[:, a] for a in range(3)}}


@pytest.mark.parametrize(
    ("name", "params", "cloud"),
    [
        ("random_cuboid", {"npoints": 300}, "uniform"),
        ("random_cuboid", {"npoints": 1000, "crop": 0.5, "randcrop": 0.5}, "clustered"),  # many re-centrings
        ("random_cuboid", {"npoints": 10**6, "max_tries": 20}, "uniform"),  # never enough: the last try
        ("random_cuboid_lidar", {"npoints": 300}, "uniform"),
    ],
)
def test_random_cuboid_crops_match_the_cpu_in_points_kept_and_extent(name, params, cloud):
    xyz = uniform_xyz(2000) if cloud == "uniform" else clustered_xyz()
    device = crop_statistics(device_rows(device_run(name, params, xyz)), xyz)
    cpu = crop_statistics([view.extras["row"] for view in cpu_run(name, params, xyz)], xyz)
    for key in device:
        assert ks_pvalue(device[key], cpu[key]) > ALPHA, key
    if params["npoints"] < len(xyz):
        assert device["kept"].min() > params["npoints"]
    if name == "random_cuboid_lidar":
        np.testing.assert_allclose(device["span2"], 1.0, atol=0.05)  # all heights kept: only x, y are cropped


def test_random_cuboid_keeps_exactly_an_inclusive_box_around_a_cloud_point():
    axis = np.arange(11, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # extent 10: half 1
    for rows in device_rows(device_run("random_cuboid", {"crop": 0.2, "randcrop": 0.2, "npoints": 0}, grid, 50)):
        low, high = grid[rows].min(0), grid[rows].max(0)
        inside = np.flatnonzero(np.all((grid >= low) & (grid <= high), axis=1))
        np.testing.assert_array_equal(np.sort(rows), inside)
        assert np.all(high - low <= 2) and len(rows) >= 8


def test_a_wrong_crop_threshold_is_detected_in_the_points_kept():
    xyz = uniform_xyz(2000)
    wrong = crop_statistics(device_rows(device_run("random_cuboid", {"npoints": 600}, xyz)), xyz)
    cpu = crop_statistics([view.extras["row"] for view in cpu_run("random_cuboid", {"npoints": 300}, xyz)], xyz)
    assert ks_pvalue(wrong["kept"], cpu["kept"]) < POWER_ALPHA


def test_random_drop_removes_the_cpu_fraction_of_points():
    xyz = uniform_xyz(2000)
    device = device_counts(device_run("random_drop", {}, xyz))
    cpu = np.array([len(view) for view in cpu_run("random_drop", {}, xyz)])
    assert ks_pvalue(device, cpu) > ALPHA
    assert (device < len(xyz)).all()
    axis = np.arange(11, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    assert (device_counts(device_run("random_drop", {"crop": 0.2}, grid, 20)) == len(grid) - 1).all()  # strict


# ----------------------------------------------------------------------------------- resampling
def distinct(views: list[np.ndarray]) -> np.ndarray:
    return np.array([len(np.unique(rows)) for rows in views])


def test_multiscale_sizes_and_repeats_match_the_cpu():
    xyz, params = uniform_xyz(700), {"sizes": [100, 500, 1000]}
    device = device_rows(device_run("multiscale", params, xyz))
    cpu = [view.extras["row"] for view in cpu_run("multiscale", params, xyz)]
    sizes = lambda views: np.searchsorted([100, 500, 1000], [len(rows) for rows in views])  # noqa: E731
    assert homogeneity_pvalue(sizes(device), sizes(cpu), 3) > ALPHA
    assert chi2_pvalue(np.bincount(sizes(device), minlength=3), np.full(3, DRAWS / 3)) > ALPHA
    for rows in device:
        if len(rows) <= len(xyz):
            assert len(np.unique(rows)) == len(rows), "no repeats when there are enough points"
    big = lambda views: distinct([rows for rows in views if len(rows) == 1000])  # noqa: E731
    assert ks_pvalue(big(device), big(cpu)) > ALPHA  # with replacement: the same number of distinct points


@pytest.mark.parametrize("count", [50, 200, 1000])
def test_resample_repeats_only_when_short_and_picks_points_uniformly(count):
    xyz = uniform_xyz(count)
    device = device_rows(device_run("resample", {"npoints": 300}, xyz))
    assert all(len(rows) == 300 for rows in device)
    if count >= 300:
        assert (distinct(device) == 300).all()
    else:
        cpu = [view.extras["row"] for view in cpu_run("resample", {"npoints": 300}, xyz)]
        assert ks_pvalue(distinct(device), distinct(cpu)) > ALPHA
    picked = np.bincount(np.concatenate(device), minlength=count)
    assert chi2_pvalue(picked, np.full(count, DRAWS * 300 / count)) > ALPHA
    first = np.array([rows[0] for rows in device])  # the order is random too: the first point is any point
    assert ks_pvalue(first, np.random.default_rng(0).integers(count, size=DRAWS)) > ALPHA


def test_resample_lidar_keeps_every_far_point_first_and_shuffles():
    xyz = lidar_xyz(near=3000, far=150)
    device = device_rows(device_run("resample_lidar", {"npoints": 1000}, xyz))
    cpu = [view.extras["row"] for view in cpu_run("resample_lidar", {"npoints": 1000}, xyz)]
    far_rows = set(range(3000, 3150))
    assert all(far_rows <= set(rows.tolist()) and len(np.unique(rows)) == 1000 for rows in device)
    positions = lambda views: np.concatenate([np.flatnonzero(rows >= 3000) for rows in views])  # noqa: E731
    assert ks_pvalue(positions(device), positions(cpu)) > ALPHA  # far points anywhere in the view, as on the CPU
    near = np.bincount(np.concatenate(device), minlength=3150)[:3000]
    assert chi2_pvalue(near, np.full(3000, DRAWS * 850 / 3000)) > ALPHA  # the near fill is uniform


def test_resample_lidar_with_more_far_points_than_asked_takes_a_random_subset_of_all():
    xyz = lidar_xyz(near=100, far=900)
    device = device_rows(device_run("resample_lidar", {"npoints": 500}, xyz))
    cpu = [view.extras["row"] for view in cpu_run("resample_lidar", {"npoints": 500}, xyz)]
    assert (distinct(device) == 500).all()
    near = lambda views: np.array([np.count_nonzero(rows < 100) for rows in views])  # noqa: E731
    assert ks_pvalue(near(device), near(cpu)) > ALPHA  # ~50 near points, not 0 (far-first) nor 100


@pytest.mark.parametrize("count", [300, 700])  # 700 missing > 300 points: with replacement; 300 ≤ 700: without
def test_resample_lidar_pads_with_every_point_plus_the_cpu_repeats(count):
    xyz = lidar_xyz(near=count, far=0)
    device = device_rows(device_run("resample_lidar", {"npoints": 1000}, xyz))
    cpu = [view.extras["row"] for view in cpu_run("resample_lidar", {"npoints": 1000}, xyz)]
    assert all(set(rows.tolist()) == set(range(count)) for rows in device)
    most = lambda views: np.array([np.bincount(rows).max() for rows in views])  # noqa: E731
    assert ks_pvalue(most(device), most(cpu)) > ALPHA
    if count == 700:
        assert (most(device) == 2).all()


# ----------------------------------------------------------------------------------- presets
def room_xyz(seed: int = 0) -> np.ndarray:
    """A floor, a wall and a box: uneven densities, so crops, drops and rotations all show in the statistics."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 4, (2000, 2)), np.zeros(2000)]
    wall = np.c_[rng.uniform(0, 4, 1000), np.full(1000, 3.0), rng.uniform(0, 2.5, 1000)]
    box = rng.uniform([1, 1, 0], [2, 1.5, 1], (1000, 3))
    return np.concatenate([floor, wall, box]).astype(np.float32)


PRESET_CASES = {
    "indoor": ({"random_cuboid": {"npoints": 500}, "multiscale": {"sizes": [1000, 2000]}}, room_xyz),
    "lidar": ({"random_cuboid_lidar": {"npoints": 500}}, lambda: lidar_xyz(near=3000, far=500)),
}
PRESET_POINTS = 1024
PRESET_VIEWS = 300


def view_statistics(views: np.ndarray) -> dict[str, np.ndarray]:
    """Per view [V, N, 3+]: extent and centroid per axis, and the number of distinct points."""
    xyz = views[..., :3]
    stats = {"distinct": np.array([len(np.unique(view, axis=0)) for view in xyz])}
    for axis in range(3):
        stats[f"extent{axis}"] = xyz[..., axis].max(1) - xyz[..., axis].min(1)
        stats[f"centroid{axis}"] = xyz[..., axis].mean(1)
    return stats


def cpu_preset_views(preset: str) -> np.ndarray:
    overrides, cloud = PRESET_CASES[preset]
    pipeline = build_transforms(preset_transforms(preset, overrides, PRESET_POINTS))
    xyz = cloud()
    return np.stack([pipeline(PointCloud(xyz), np.random.default_rng(seed)).xyz for seed in range(PRESET_VIEWS)])


def device_preset_views(preset: str, overrides: dict, device: str = "cpu") -> np.ndarray:
    views = DeviceViews(preset_transforms(preset, overrides, PRESET_POINTS))
    clouds = torch.from_numpy(PRESET_CASES[preset][1]()).to(device)[None].repeat(PRESET_VIEWS // 2, 1, 1)
    counts = torch.full((len(clouds),), clouds.shape[1])
    view_a, view_b = views(clouds, counts, view_generator(0, 0, 0, 0, torch.device(device)))
    return torch.cat([view_a, view_b]).cpu().numpy()


@pytest.fixture(scope="module")
def cpu_presets() -> dict[str, dict[str, np.ndarray]]:
    return {preset: view_statistics(cpu_preset_views(preset)) for preset in PRESET_CASES}


@pytest.mark.parametrize("preset", list(PRESET_CASES))
def test_whole_presets_match_the_cpu_views_in_extent_centroid_and_distinct_points(preset, cpu_presets):
    device = view_statistics(device_preset_views(preset, PRESET_CASES[preset][0]))
    for key, values in device.items():
        assert ks_pvalue(values, cpu_presets[preset][key]) > ALPHA, key


def test_a_preset_with_a_wrong_crop_is_detected_by_the_same_statistics(cpu_presets):
    wrong = {**PRESET_CASES["indoor"][0], "random_cuboid": {"npoints": 500, "crop": 0.9}}
    device = view_statistics(device_preset_views("indoor", wrong))
    assert min(ks_pvalue(values, cpu_presets["indoor"][key]) for key, values in device.items()) < POWER_ALPHA


# ----------------------------------------------------------------------------------- shapes, features, seeds
def small_views() -> DeviceViews:
    return DeviceViews(preset_transforms("indoor", {"random_cuboid": {"npoints": 100}, "multiscale": {"sizes": [300]}},
                                         256))  # fmt: skip


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three clouds of 500, 800 and 1200 points padded to 1200, each with (row, cloud) features; padding rows are
    far away, marked row −1."""
    sizes = (500, 800, 1200)
    batch = torch.full((3, 1200, 5), -1.0)
    batch[..., :3] = 1000.0
    for i, size in enumerate(sizes):
        batch[i, :size] = torch.from_numpy(np.c_[with_rows(uniform_xyz(size, seed=i)), np.full(size, i)])
    return batch, torch.tensor(sizes)


def test_views_are_float32_of_points_per_view_with_features_that_follow_their_points():
    clouds, counts = padded_batch()
    view_a, view_b = small_views()(clouds, counts, view_generator(0, 0, 0, 0, torch.device("cpu")))
    assert view_a.shape == view_b.shape == (3, 256, 5) and view_a.dtype == torch.float32
    for i in range(3):
        for view in (view_a[i], view_b[i]):
            rows, cloud = view[:, 3].long(), view[:, 4]
            assert (rows >= 0).all() and (rows < counts[i]).all(), "padding never reaches a view"
            assert (cloud == i).all()
            source = clouds[i, rows, :3].double()
            linear = torch.linalg.lstsq(source, view[:, :3].double()).solution  # flip · rotation · scale
            np.testing.assert_allclose((source @ linear).numpy(), view[:, :3].numpy(), atol=1e-4)
            assert not torch.allclose(linear, torch.eye(3, dtype=torch.float64), atol=1e-3)


def test_a_cloud_per_view_feeds_its_own_view():
    clouds, counts = padded_batch()
    per_view = torch.stack([clouds, clouds], dim=1).clone()
    per_view[:, 1, :, 4] += 10  # view b's clouds are marked
    view_a, view_b = small_views()(per_view, counts, view_generator(0, 0, 0, 0, torch.device("cpu")))
    assert (view_a[..., 4] < 10).all() and (view_b[..., 4] >= 10).all()


def test_views_are_a_function_of_seed_epoch_batch_and_rank():
    clouds, counts = padded_batch()
    views = small_views()

    def draw(*key: int) -> torch.Tensor:
        return torch.cat(views(clouds, counts, view_generator(*key, torch.device("cpu"))))

    first = draw(0, 3, 5, 0)
    assert torch.equal(first, draw(0, 3, 5, 0))
    for other in ((1, 3, 5, 0), (0, 4, 5, 0), (0, 3, 6, 0), (0, 3, 5, 1)):
        assert not torch.equal(first, draw(*other)), other
    view_a, view_b = views(clouds, counts, view_generator(0, 3, 5, 0, torch.device("cpu")))
    assert not torch.equal(view_a, view_b)


@pytest.mark.parametrize(
    ("clouds", "counts", "message"),
    [
        (torch.zeros(2, 10), torch.tensor([10, 10]), r"shape \[B, P, 3 \+ C\] or \[B, 2, P, 3 \+ C\], got \[2, 10\]"),
        (torch.zeros(2, 10, 2), torch.tensor([10, 10]), r"got \[2, 10, 2\]"),
        (torch.zeros(2, 10, 3, dtype=torch.int32), torch.tensor([10, 10]), "float clouds"),
        (torch.zeros(2, 10, 3), torch.tensor([10]), r"one integer count per cloud \(2\), got \[1\]"),
        (torch.zeros(2, 10, 3), torch.tensor([10, 11]), r"point counts must be in \[1, 10\]"),
        (torch.zeros(2, 10, 3), torch.tensor([0, 5]), r"point counts must be in \[1, 10\]"),
    ],
)
def test_bad_clouds_are_a_one_line_data_error(clouds, counts, message):
    with pytest.raises(DataError, match=message):
        small_views()(clouds, counts, torch.Generator())


def test_augmentations_without_a_final_resampler_or_with_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="must end with one of resample, resample_lidar"):
        DeviceViews((TransformSpec("random_flip"),))
    with pytest.raises(ConfigError, match="crop ≤ randcrop"):
        DeviceViews((TransformSpec("random_cuboid", {"crop": 0.8, "randcrop": 0.5}), TransformSpec("resample")))


# ----------------------------------------------------------------------------------- data path and trainer
def gpu_run(**changes) -> dict:
    config = {"datasets": {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}}},
              "pretrain": {"gpu": {**TINY_RUN, "augment_on": "gpu", "deterministic": False, **changes}}}  # fmt: skip
    return validate_config(config)["pretrain"]["gpu"]


def test_the_dataset_hands_over_the_cpu_paths_cuts_and_collate_pads_them(shards: Path):  # noqa: F811
    dirs = [shards / "shards/demo_indoor"]
    transforms = build_transforms(preset_transforms("indoor", {}, 256), max_input_points=300)
    grid = VoxelGrid((0.5, 0.5, 0.5), (-10.0, -10.0, -10.0, 10.0, 10.0, 10.0), 5, 1000)
    dataset = TwoViewDataset(dirs, seed=3, verify=False, point=PointViews(transforms, InputFeatures(), True),
                             voxel=VoxelViews(build_transforms(()), InputFeatures(), grid))  # fmt: skip
    assert dataset.augments_on_device
    item = dataset[(2, 5)]
    assert set(item) == {"index", CLOUDS, "count", "voxel_a", "voxel_b"}  # voxel views stay on the CPU
    assert isinstance(item["voxel_a"], Voxels)
    points = dataset.source[5]["points"]
    cut_a, cut_b = two_views(points, Compose((), 300), np.random.default_rng([3, 2, 5]))  # the CPU path's cuts
    np.testing.assert_array_equal(item[CLOUDS], np.stack([cut_a.xyz, cut_b.xyz]).astype(np.float32))
    assert item["count"] == 300 < len(points) and not np.array_equal(cut_a.xyz, cut_b.xyz)
    small = [{CLOUDS: np.ones((2, n, 3), np.float32), "count": n, "index": n} for n in (3, 5)]
    batch = collate_views(small)
    assert batch[CLOUDS].shape == (2, 2, 5, 3) and batch["count"].tolist() == [3, 5]
    assert batch[CLOUDS][0, :, 3:].abs().sum() == 0 and batch[CLOUDS][0, :, :3].eq(1).all()


def test_a_two_step_pretrain_makes_its_point_views_on_the_device(shards: Path, tmp_path: Path):  # noqa: F811
    run = gpu_run(epochs=1, batch_size=24, loss={"num_negatives": 48, "embedding_dim": 32})  # 48 samples: 2 steps
    trainer = Trainer("gpu", run, [shards / "shards/demo_indoor"], tmp_path / "out", WorldInfo(0, 1, 0, None), "cpu")
    assert trainer.device_views is not None
    batch = next(iter(trainer._loader()))
    assert CLOUDS in batch and "view_a" not in batch
    view_a, view_b = trainer._inputs(batch)["point"]
    assert view_a.shape == view_b.shape == (24, TINY_RUN["points_per_view"], 3)
    assert torch.equal(view_a, trainer._inputs(batch)["point"][0]), "the same (seed, epoch, batch): the same views"
    assert trainer.fit() == 0
    with open(tmp_path / "out/metrics.csv", newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    assert yaml.safe_load((tmp_path / "out/config.yaml").read_text())["augment_on"] == "gpu"


# ----------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", list(PRESET_CASES))
def test_on_cuda_the_presets_match_the_cpu_views(preset, cpu_presets):
    device = view_statistics(device_preset_views(preset, PRESET_CASES[preset][0], "cuda"))
    for key, values in device.items():
        assert ks_pvalue(values, cpu_presets[preset][key]) > ALPHA, key
