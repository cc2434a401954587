"""Generated rooms with scanned meshes in them, seen by a virtual depth camera: the scene code of the built-in
indoor data (scripts/make_builtin_data.py) and of the opt-in pretraining corpus (data/sources/corpus.py).

A room is boxes (floor at z = 0, walls, ceiling), maybe a table, and meshes scaled, spun about z and placed on
the floor or the table without overlapping. A camera near a wall aims at one of the objects; open3d's ray
casting gives exact depth (mm), the class of every hit and Lambert-shaded colour. Everything is drawn from the
numpy generator passed in, so a scene is a function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
from PIL import Image

from depthcontrast.errors import DataError
from depthcontrast.io_utils import atomic_path

IMAGE_W, IMAGE_H = 320, 240
FX = FY = 262.5  # Kinect/Redwood 525 px at half resolution
CX, CY = 159.5, 119.5
DEPTH_SCALE = 1000  # PNG units per metre
MIN_DEPTH_M, MAX_DEPTH_M = 0.3, 8.0  # outside this range the virtual sensor gives no return
ROOM_SIDE_M = (3.5, 6.0)
ROOM_HEIGHT_M = (2.4, 2.9)
SLAB_M = 0.1  # thickness of floor, walls and ceiling boxes
TABLE_PROBABILITY = 0.75
TABLE_SIZE_M = ((0.9, 1.6), (0.6, 0.9))
TABLE_HEIGHT_M = (0.70, 0.78)
TABLE_TOP_M, TABLE_LEG_M = 0.04, 0.05
FLOOR_OBJECTS = (3, 5)  # inclusive range of object count on the floor
TABLE_OBJECTS = (1, 2)
FLOOR_OBJECT_SIZE_M = (0.4, 0.8)  # largest bounding-box side after scaling
TABLE_OBJECT_SIZE_M = (0.2, 0.35)
WALL_MARGIN_M = 0.3
PLACEMENT_TRIES = 50
CAMERA_HEIGHT_M = (1.2, 1.8)
CAMERA_WALL_BAND_M = (0.3, 1.5)  # camera distance from the wall it stands by
CAMERA_ALONG_WALL = (0.15, 0.85)  # camera position along that wall, as a fraction of its length
TARGET_ABOVE_BASE_M = 0.2  # cameras aim this far above an object's base
TARGET_JITTER_M = 0.4
MIN_VIEW_DISTANCE_M = 1.0  # horizontal distance from the camera to what it aims at
POSE_DECIMALS = 6
AMBIENT = 0.25


@dataclass
class Part:
    """One ray-cast geometry: float32 vertices [V, 3], uint32 triangles [F, 3], its class name."""

    vertices: np.ndarray
    triangles: np.ndarray
    cls: str


def box(lo: np.ndarray, hi: np.ndarray, cls: str) -> Part:
    """An axis-aligned closed box from corner `lo` to corner `hi`."""
    corners = np.array([[(hi if (i >> k) & 1 else lo)[k] for k in range(3)] for i in range(8)], np.float32)
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    tris = [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]
    return Part(corners, np.array(tris, np.uint32), cls)


def read_mesh(path: Path, name: str, up_rotation_deg: float = 0.0) -> Part:
    """A mesh file (what open3d reads: OFF, PLY, STL, OBJ) as a Part of class `name`: rotated about x by
    `up_rotation_deg` (to turn its up axis into +z), centred in x/y, resting on z = 0, largest side 1."""
    mesh = o3d.io.read_triangle_mesh(str(path))
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(vertices) == 0 or len(triangles) == 0:
        raise DataError(f"{path}: no triangles read")
    vertices = vertices @ rotation_x(np.radians(up_rotation_deg)).T
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    vertices = (vertices - [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]) / (hi - lo).max()
    return Part(vertices.astype(np.float32), triangles.astype(np.uint32), name)


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class Surface:
    """A horizontal rectangle objects stand on: corner `origin` (x, y), `size` (x, y), at `height`."""

    origin: np.ndarray
    size: np.ndarray
    height: float


def room_parts(width: float, depth: float, height: float) -> list[Part]:
    """Floor (top at z=0), ceiling and four walls of a width x depth x height room, as slabs."""
    s = SLAB_M
    return [
        box(np.array([-s, -s, -s]), np.array([width + s, depth + s, 0.0]), "floor"),
        box(np.array([-s, -s, height]), np.array([width + s, depth + s, height + s]), "ceiling"),
        box(np.array([-s, -s, 0.0]), np.array([0.0, depth + s, height]), "wall"),
        box(np.array([width, -s, 0.0]), np.array([width + s, depth + s, height]), "wall"),
        box(np.array([0.0, -s, 0.0]), np.array([width, 0.0, height]), "wall"),
        box(np.array([0.0, depth, 0.0]), np.array([width, depth + s, height]), "wall"),
    ]


def table_parts(top: Surface) -> list[Part]:
    """A table: a slab under `top` and four square legs at its corners."""
    lo, hi = top.origin, top.origin + top.size
    parts = [box(np.array([*lo, top.height - TABLE_TOP_M]), np.array([*hi, top.height]), "table")]
    for corner in ((0, 0), (1, 0), (0, 1), (1, 1)):
        leg = lo + np.array(corner) * (top.size - TABLE_LEG_M)
        parts.append(box(np.array([*leg, 0.0]), np.array([*(leg + TABLE_LEG_M), top.height - TABLE_TOP_M]), "table"))
    return parts


def build_room(rng: np.random.Generator, meshes: dict[str, Part]) -> tuple[list[Part], dict[str, Any]]:
    """A room (floor at z=0, walls, ceiling), maybe a table, and scaled scanned meshes on floor/table."""
    width, depth = rng.uniform(*ROOM_SIDE_M, size=2)
    height = rng.uniform(*ROOM_HEIGHT_M)
    parts = room_parts(width, depth, height)
    layout: dict[str, Any] = {"room_m": [round(float(v), 3) for v in (width, depth, height)], "objects": []}
    floor = Surface(np.zeros(2), np.array([width, depth]), 0.0)
    footprints: list[tuple[np.ndarray, float]] = []  # (centre xy, radius) already taken on the floor
    table = None
    if rng.uniform() < TABLE_PROBABILITY:
        size = np.array([rng.uniform(*TABLE_SIZE_M[0]), rng.uniform(*TABLE_SIZE_M[1])])
        top_height = rng.uniform(*TABLE_HEIGHT_M)
        radius = float(np.linalg.norm(size)) / 2
        centre = place(rng, floor, radius, footprints, WALL_MARGIN_M)
        if centre is not None:
            table = Surface(centre - size / 2, size, top_height)
            parts += table_parts(table)
            footprints.append((centre, radius))
            layout["table"] = {
                "centre_xy": np.round(centre, 3).tolist(),
                "size_m": np.round(size, 3).tolist(),
                "height_m": round(top_height, 3),
            }
    kinds = balanced_kinds(rng, sorted(meshes), FLOOR_OBJECTS[1] + TABLE_OBJECTS[1])
    for _ in range(rng.integers(FLOOR_OBJECTS[0], FLOOR_OBJECTS[1] + 1)):
        add_object(rng, meshes[kinds.pop()], FLOOR_OBJECT_SIZE_M, floor, footprints, WALL_MARGIN_M, parts, layout)
    if table is not None:
        on_table: list[tuple[np.ndarray, float]] = []
        for _ in range(rng.integers(TABLE_OBJECTS[0], TABLE_OBJECTS[1] + 1)):
            add_object(rng, meshes[kinds.pop()], TABLE_OBJECT_SIZE_M, table, on_table, 0.0, parts, layout)
    return parts, layout


def balanced_kinds(rng: np.random.Generator, names: list[str], count: int) -> list[str]:
    """`count` mesh kinds drawn as concatenated random permutations, so every kind appears evenly."""
    kinds: list[str] = []
    while len(kinds) < count:
        kinds += [names[i] for i in rng.permutation(len(names))]
    return kinds[:count]


def place(
    rng: np.random.Generator,
    surface: Surface,
    radius: float,
    taken: list[tuple[np.ndarray, float]],
    margin: float,
) -> np.ndarray | None:
    """A random free xy centre for a disc of `radius` on `surface`, `margin` from its edges; None if none."""
    lo = surface.origin + margin + radius
    hi = surface.origin + surface.size - margin - radius
    if np.any(hi <= lo):
        return None
    for _ in range(PLACEMENT_TRIES):
        centre = rng.uniform(lo, hi)
        if all(np.linalg.norm(centre - c) >= radius + r for c, r in taken):
            return centre
    return None


def add_object(
    rng: np.random.Generator,
    mesh: Part,
    size_range: tuple[float, float],
    surface: Surface,
    taken: list[tuple[np.ndarray, float]],
    margin: float,
    parts: list[Part],
    layout: dict[str, Any],
) -> None:
    """Scale, spin and place one mesh on `surface` if it fits; record it in `parts` and `layout`."""
    size = rng.uniform(*size_range)
    yaw = rng.uniform(0, 2 * np.pi)
    vertices = (mesh.vertices.astype(np.float64) * size) @ rotation_z(yaw).T
    radius = float(np.linalg.norm(vertices[:, :2], axis=1).max())
    centre = place(rng, surface, radius, taken, margin)
    if centre is None:
        return
    taken.append((centre, radius))
    position = np.array([centre[0], centre[1], surface.height])
    parts.append(Part((vertices + position).astype(np.float32), mesh.triangles, mesh.cls))
    layout["objects"].append(
        {
            "class": mesh.cls,
            "size_m": round(size, 3),
            "yaw_rad": round(yaw, 4),
            "position_m": np.round(position, 3).tolist(),
        }
    )


def camera_pose(rng: np.random.Generator, room: list[float], targets: list[np.ndarray]) -> np.ndarray:
    """camera_to_world 4x4 (x right, y down, z forward): eye near a wall at 1.2-1.8 m, aimed at a target."""
    width, depth, _ = room
    for _ in range(PLACEMENT_TRIES):
        band = rng.uniform(*CAMERA_WALL_BAND_M)
        along = rng.uniform(*CAMERA_ALONG_WALL)
        xy = [
            (band, along * depth),
            (width - band, along * depth),
            (along * width, band),
            (along * width, depth - band),
        ][rng.integers(4)]
        eye = np.array([*xy, rng.uniform(*CAMERA_HEIGHT_M)])
        target = targets[rng.integers(len(targets))] + rng.uniform(-TARGET_JITTER_M, TARGET_JITTER_M, 3)
        if np.linalg.norm(target[:2] - eye[:2]) >= MIN_VIEW_DISTANCE_M:
            break
    else:
        raise DataError(f"no camera pose {MIN_VIEW_DISTANCE_M} m from a target in a {room} m room")
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return np.round(pose, POSE_DECIMALS)


def pixel_rays() -> np.ndarray:
    """Camera-frame ray directions [H, W, 3] with z = 1, so a hit distance t is the z-depth."""
    u, v = np.meshgrid(np.arange(IMAGE_W), np.arange(IMAGE_H))
    return np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u, dtype=np.float64)], axis=-1)


def render(
    scene: o3d.t.geometry.RaycastingScene, part_classes: np.ndarray, pose: np.ndarray, albedo: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one frame: depth uint16 (mm), label uint8, colour uint8 [H, W, 3]. `part_classes` holds each
    added geometry's class id (0: no return), `albedo` [classes, 3] each class's colour (row 0 unused)."""
    dirs = pixel_rays() @ pose[:3, :3].T
    rays = np.concatenate([np.broadcast_to(pose[:3, 3], dirs.shape), dirs], axis=-1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    valid = np.isfinite(t) & (t >= MIN_DEPTH_M) & (t <= MAX_DEPTH_M)
    depth = np.where(valid, np.round(np.where(valid, t, 0) * DEPTH_SCALE), 0).astype(np.uint16)
    ids = hit["geometry_ids"].numpy().astype(np.int64)
    label = np.where(valid, part_classes[np.where(valid, ids, 0)], 0).astype(np.uint8)
    unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    lambert = np.abs(np.sum(hit["primitive_normals"].numpy() * unit, axis=-1))
    colour = albedo[label] * (AMBIENT + (1 - AMBIENT) * np.where(valid, lambert, 0))[..., None]
    return depth, label, np.round(colour * 255).astype(np.uint8)


def write_png(dest: Path, array: np.ndarray) -> None:
    """Write a PNG (uint16 grey, uint8 grey or uint8 RGB) atomically; PIL adds no timestamp."""
    with atomic_path(dest) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", optimize=True)


def raycasting_scene(parts: list[Part]) -> o3d.t.geometry.RaycastingScene:
    """An open3d ray-casting scene of `parts`, geometry id = index in the list."""
    scene = o3d.t.geometry.RaycastingScene()
    for part in parts:
        scene.add_triangles(o3d.core.Tensor(part.vertices), o3d.core.Tensor(part.triangles))
    return scene


def camera_targets(layout: dict[str, Any]) -> list[np.ndarray]:
    """Points the cameras aim at: a little above each object's base, else above the room's centre."""
    above = np.array([0.0, 0.0, TARGET_ABOVE_BASE_M])
    targets = [np.array(o["position_m"]) + above for o in layout["objects"]]
    return targets or [np.array([layout["room_m"][0] / 2, layout["room_m"][1] / 2, 0.0]) + above]


def camera_file(poses: dict[str, list]) -> dict[str, Any]:
    """The camera.json of a scene (the `depth_png` layout): the intrinsics, depth scale and frame poses."""
    return {"width": IMAGE_W, "height": IMAGE_H, "fx": FX, "fy": FY, "cx": CX, "cy": CY,
            "depth_scale": DEPTH_SCALE, "poses": poses}  # fmt: skip
