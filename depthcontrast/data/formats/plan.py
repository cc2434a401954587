"""Planning: which work units a manifest's files become, in a deterministic order."""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from depthcontrast.data.formats import depth_png, redwood, waymo
from depthcontrast.data.formats.base import Unit, natural_key
from depthcontrast.data.manifest import Manifest
from depthcontrast.errors import DataError

log = logging.getLogger(__name__)

EXTENSION_FORMATS = {
    ".ply": "ply",
    ".pcd": "pcd",
    ".las": "las",
    ".laz": "las",
    ".npy": "npy",
    ".bin": "kitti_bin",
    ".sens": "scannet_sens",
    ".tfrecord": "waymo",
}
SOURCE_KIND_FORMATS = {
    "scannet": "scannet_sens",
    "redwood": "redwood",
    "kitti": "kitti_bin",
    "waymo": "waymo",
}
SINGLE_FILE_FORMATS = ("ply", "pcd", "las", "npy", "kitti_bin")
COMPANION = "companion"  # a file that belongs to a unit but holds no points itself
COMPANION_NAMES = {depth_png.CAMERA_FILE, depth_png.CLASSES_FILE, "manifest.json"}
COMPANION_PREFIXES = ("readme", "licence", "license", "copying", "notice", "provenance")
SKIPPED_SHOWN = 5


def _is_documentation(rel: PurePosixPath) -> bool:
    """READMEs, licences and the like, or files in a folder named so (LICENSES/...)."""
    return rel.name.lower() in COMPANION_NAMES or any(
        part.lower().startswith(COMPANION_PREFIXES) for part in (rel.name, rel.parent.name)
    )


def _file_format(rel: PurePosixPath, name: str | None, files: set[str]) -> str | None:
    """The format `rel` is read as, COMPANION for a unit's side files, None when unknown."""
    if _is_documentation(rel):
        return COMPANION
    suffix = rel.suffix.lower()
    if suffix == ".png" and (rel.parent.parent / depth_png.CAMERA_FILE).as_posix() in files:
        if rel.parent.name == depth_png.DEPTH_DIR:
            return "depth_png"
        if rel.parent.name in (depth_png.COLOR_DIR, depth_png.LABEL_DIR):
            return COMPANION
    if name == "redwood":
        if suffix == ".zip" or redwood.is_depth_member(rel.as_posix()):
            return "redwood"
        if redwood.is_rgb_member(rel.as_posix()):
            return COMPANION
    if name == "waymo" and suffix == ".npy":
        return "waymo"
    return EXTENSION_FORMATS.get(suffix)


def _sample_id(dataset: str, *parts: str) -> str:
    return "/".join([dataset, *(p for p in parts if p not in ("", "."))])


def _without_suffix(rel: str) -> str:
    return PurePosixPath(rel).with_suffix("").as_posix()


def _every_nth(rels: list[str], fmt: dict, group_of) -> list[str]:
    """Every `frame_step`-th file (default: all) of each group, in natural frame order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in rels:
        groups[group_of(rel)].append(rel)
    step = fmt.get("frame_step") or 1
    return [rel for members in groups.values() for rel in sorted(members, key=natural_key)[::step]]


def _depth_png_units(rels: list[str], files: set[str], root: Path, fmt: dict, dataset: str) -> list[Unit]:
    units = []
    for rel in _every_nth(rels, fmt, lambda r: PurePosixPath(r).parent.parent.as_posix()):
        path = PurePosixPath(rel)
        scene, frame = path.parent.parent, path.stem
        side = {
            key: (scene / folder / path.name).as_posix()
            for key, folder in (("color", depth_png.COLOR_DIR), ("label", depth_png.LABEL_DIR))
        }
        options = {key: str(root / side_rel) if side_rel in files else None for key, side_rel in side.items()}
        options["camera"] = str(root / scene / depth_png.CAMERA_FILE)
        sample_id = _sample_id(dataset, scene.as_posix(), frame)
        units.append(Unit(rel, str(root / rel), "depth_png", sample_id, options))
    return units


def _redwood_units(rels: list[str], files: set[str], root: Path, dataset: str) -> list[Unit]:
    zips = [r for r in rels if r.lower().endswith(".zip")]
    sequences = {PurePosixPath(r).parent.parent.as_posix() for r in rels if r not in zips}
    members: dict[str, list[str]] = defaultdict(list)  # sequence folder → its depth/ and rgb/ images
    for rel in sorted(files):
        path = PurePosixPath(rel)
        if redwood.is_depth_member(rel) or redwood.is_rgb_member(rel):
            members[path.parent.parent.as_posix()].append(f"{path.parent.name}/{path.name}")
    units = []
    for seq in sorted(sequences):
        name = PurePosixPath(seq).name if seq != "." else root.name
        units.append(Unit(seq, str(root / seq), "redwood", _sample_id(dataset, name), {"files": members[seq]}))
    for rel in zips:
        units.append(Unit(rel, str(root / rel), "redwood", _sample_id(dataset, PurePosixPath(rel).stem)))
    return units


def _waymo_units(rels: list[str], root: Path, fmt: dict, dataset: str) -> list[Unit]:
    segments = [r for r in rels if r.lower().endswith(".tfrecord")]
    waymo.require_waymo(segments)
    units = [Unit(r, str(root / r), "waymo", _sample_id(dataset, waymo.segment_name(r))) for r in segments]
    extracted = [r for r in rels if r not in segments]
    frames = _every_nth(extracted, fmt, lambda r: PurePosixPath(r).parent.as_posix())
    return units + [Unit(r, str(root / r), "waymo", _sample_id(dataset, _without_suffix(r))) for r in frames]


@dataclass(frozen=True)
class Plan:
    """A dataset's work units in sample order, and the files of no known point format it skips."""

    units: list[Unit]
    skipped: list[str]


def plan_units(manifest: Manifest, fmt: dict, dataset: str) -> list[Unit]:
    """The work units of `plan_dataset` (without the skipped files)."""
    return plan_dataset(manifest, fmt, dataset).units


def plan_dataset(manifest: Manifest, fmt: dict, dataset: str) -> Plan:
    """Work units for a manifest's files, sorted by sample id (natural order).

    `fmt` is the validated `format` config block. With `name: auto` the format comes from the source
    kind (scannet, redwood, kitti, waymo) or else from each file's extension, and files of no known
    format are skipped with a warning; with an explicit name, a file that is not of that format
    becomes a unit that `decode_unit` quarantines as unreadable. Side files (camera.json, colour and
    label images, READMEs, licences) are never units.
    """
    name = fmt.get("name") or "auto"
    explicit = name != "auto"
    resolved = name if explicit else SOURCE_KIND_FORMATS.get(manifest.source_kind)
    root = Path(manifest.root)
    files = {f.path for f in manifest.files}
    by_format: dict[str, list[str]] = defaultdict(list)
    units: list[Unit] = []
    skipped = []
    for rel in sorted(files):
        kind = _file_format(PurePosixPath(rel), resolved, files)
        if kind == COMPANION:
            continue
        if kind is not None and resolved in (None, kind):
            by_format[kind].append(rel)
        elif explicit:
            detail = f"{rel}: not a {name} file (format.name is {name!r}; it reads as {kind or 'unknown'})"
            sample_id = _sample_id(dataset, _without_suffix(rel))
            units.append(Unit(rel, str(root / rel), name, sample_id, {"mismatch": detail}))
        else:
            skipped.append(rel)
    if skipped:
        shown = ", ".join(skipped[:SKIPPED_SHOWN]) + (" ..." if len(skipped) > SKIPPED_SHOWN else "")
        log.warning("%s: skipped %d file(s) of no known point format: %s", dataset, len(skipped), shown)

    for kind in SINGLE_FILE_FORMATS:
        units += [Unit(r, str(root / r), kind, _sample_id(dataset, _without_suffix(r))) for r in by_format[kind]]
    units += [
        Unit(r, str(root / r), "scannet_sens", _sample_id(dataset, PurePosixPath(r).stem))
        for r in by_format["scannet_sens"]
    ]
    units += _depth_png_units(by_format["depth_png"], files, root, fmt, dataset)
    units += _redwood_units(by_format["redwood"], files, root, dataset)
    units += _waymo_units(by_format["waymo"], root, fmt, dataset)
    return Plan(_sorted_unique(units), skipped)


def _sorted_unique(units: list[Unit]) -> list[Unit]:
    units = sorted(units, key=lambda u: (natural_key(u.sample_prefix), u.source))
    for previous, unit in itertools.pairwise(units):
        if previous.sample_prefix == unit.sample_prefix:
            raise DataError(
                f"{previous.source} and {unit.source} would both give sample id {unit.sample_prefix!r}; "
                "rename one of them or split them into two datasets"
            )
    return units
