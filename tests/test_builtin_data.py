"""The shipped built-in dataset (depthcontrast/builtin/) is complete, intact and in its documented layout."""

from __future__ import annotations

import json
from pathlib import Path

import laspy
import numpy as np
import pytest
from PIL import Image

from depthcontrast.io_utils import sha256_file

BUILTIN = Path(__file__).resolve().parents[1] / "depthcontrast" / "builtin"
MAX_TOTAL_BYTES = 10 * 1000 * 1000
MIN_CROP_POINTS = 3000
CAMERA_KEYS = {"width", "height", "fx", "fy", "cx", "cy", "depth_scale", "poses"}


def manifest() -> dict:
    return json.loads((BUILTIN / "MANIFEST.json").read_text())


def shipped(prefix: str, suffix: str) -> list[Path]:
    return [
        BUILTIN / e["path"] for e in manifest()["files"] if e["path"].startswith(prefix) and e["path"].endswith(suffix)
    ]


def test_every_manifest_file_exists_with_its_recorded_size_and_sha256():
    entries = manifest()["files"]
    assert entries, "the manifest lists no files"
    for entry in entries:
        path = BUILTIN / entry["path"]
        assert path.is_file(), f"{path} missing"
        assert path.stat().st_size == entry["size"], f"{path}: size differs from the manifest"
        assert sha256_file(path) == entry["sha256"], f"{path}: sha256 differs from the manifest"


def test_no_shipped_data_file_is_missing_from_the_manifest():
    listed = {e["path"] for e in manifest()["files"]}
    on_disk = {p.relative_to(BUILTIN).as_posix() for p in BUILTIN.rglob("*") if p.is_file()}
    assert on_disk - listed == {"MANIFEST.json"}


def test_total_shipped_size_is_within_the_budget():
    total = sum(p.stat().st_size for p in BUILTIN.rglob("*") if p.is_file())
    assert total <= MAX_TOTAL_BYTES, f"built-in data is {total} bytes, over {MAX_TOTAL_BYTES}"


def test_every_manifest_group_states_provenance_and_what_is_captured():
    groups = manifest()["extra"]["groups"]
    assert set(groups) == {"lidar", "indoor"}
    for group in groups.values():
        assert "captured_vs_simulated" in group
    for tile in groups["lidar"]["tiles"].values():
        assert {"package", "path", "sha256", "licence"} <= set(tile["source"])
    for mesh in groups["indoor"]["meshes"].values():
        assert {"package", "path", "sha256", "licence"} <= set(mesh)


def lidar_crops() -> list[tuple[float, dict]]:
    tiles = manifest()["extra"]["groups"]["lidar"]["tiles"]
    return [(tile["crop_size_m"], crop) for _, tile in sorted(tiles.items()) for crop in tile["crops"]]


@pytest.mark.parametrize(("crop_size", "crop"), lidar_crops(), ids=lambda c: c["file"] if isinstance(c, dict) else "")
def test_lidar_crop_opens_recentred_with_its_recorded_points_and_classes(crop_size: float, crop: dict):
    las = laspy.read(BUILTIN / crop["file"])
    assert len(las.points) == crop["points"] >= MIN_CROP_POINTS
    codes, counts = np.unique(np.asarray(las.classification), return_counts=True)
    assert {str(c): int(n) for c, n in zip(codes, counts, strict=True)} == crop["classes"]
    half = crop_size / 2 + 0.001
    assert np.abs(np.asarray(las.x)).max() <= half and np.abs(np.asarray(las.y)).max() <= half


def test_indoor_classes_start_with_no_return():
    classes = json.loads((BUILTIN / "indoor" / "classes.json").read_text())
    assert classes["0"] == "no_return"
    assert [int(k) for k in classes] == list(range(len(classes)))


@pytest.mark.parametrize(
    "depth_path",
    [p for p in shipped("indoor/", ".png") if p.parent.name == "depth"],
    ids=lambda p: f"{p.parents[1].name}/{p.stem}",
)
def test_depth_frame_is_uint16_with_a_label_that_is_zero_exactly_where_depth_is_zero(depth_path: Path):
    depth = np.asarray(Image.open(depth_path))
    label = np.asarray(Image.open(depth_path.parents[1] / "label" / depth_path.name))
    assert depth.dtype == np.uint16
    assert label.shape == depth.shape
    assert np.array_equal(label == 0, depth == 0)
    assert (depth > 0).mean() > 0.5, "most pixels should see the room"


@pytest.mark.parametrize("camera_path", shipped("indoor/", "camera.json"), ids=lambda p: p.parent.name)
def test_camera_json_has_intrinsics_and_a_pose_for_every_frame(camera_path: Path):
    camera = json.loads(camera_path.read_text())
    assert set(camera) >= CAMERA_KEYS
    frames = sorted(p.stem for p in (camera_path.parent / "depth").glob("*.png"))
    assert frames and sorted(camera["poses"]) == frames
    for frame in frames:
        pose = np.asarray(camera["poses"][frame])
        assert pose.shape == (4, 4)
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-5)
        shape = np.asarray(Image.open(camera_path.parent / "depth" / f"{frame}.png")).shape
        assert shape == (camera["height"], camera["width"])
