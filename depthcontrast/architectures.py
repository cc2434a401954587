"""The encoder architectures and the export targets made from them: one table each, torch-free.

Everything that lists them reads these tables: the config schema's enums (config.load_schema fills them in from
SCHEMA_ENUMS), the config checks, the trainer's model tables (models/encoders.py), export and evaluation, and
the workflow's wildcard constraints and the CLI's `--target` choices (KNOWN_TARGETS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from depthcontrast.data.cgal_data import CORPUS_MESHES

REPRESENTATIONS = ("point", "voxel")  # what of a sample an encoder reads; a run trains one or both, point first
SPCONV, MINKOWSKI = "spconv", "minkowski"
VOXEL_STACKS = (SPCONV, MINKOWSKI)  # the sparse-conv libraries of MinkUNet (voxel_backbone.stack), default first


@dataclass(frozen=True)
class Architecture:
    """An encoder architecture: the representation it reads, its name in messages, what a run exports by default."""

    representation: str
    title: str
    default_targets: tuple[str, ...]


ARCHITECTURES: dict[str, Architecture] = {
    "pointnet2_ssg": Architecture("point", "PointNet++", ("votenet", "plain")),
    "pointnet2_msg": Architecture("point", "PointNet-MSG", ("openpcdet", "plain")),
    "spconv_unet": Architecture("voxel", "sparse UNet (spconv)", ("openpcdet",)),
    "minkunet": Architecture("voxel", "MinkUNet", ("minkunet_seg",)),
}
# export target → the architectures it can be made from, any one of them
EXPORT_TARGETS: dict[str, tuple[str, ...]] = {
    "votenet": ("pointnet2_ssg",),
    "h3dnet": ("pointnet2_ssg",),  # H3DNet's backbones are VoteNet's Pointnet2Backbone
    "plain": ("pointnet2_ssg", "pointnet2_msg"),
    "minkunet_seg": ("minkunet",),
    "openpcdet": ("pointnet2_msg", "spconv_unet"),  # PointRCNN's or Part-A2's backbone_3d
}
KNOWN_TARGETS = tuple(EXPORT_TARGETS)  # the CLI's --target choices and the rules' {target} wildcard


def architectures_of(representation: str) -> tuple[str, ...]:
    """The architectures of the encoders of one representation, in table order."""
    return tuple(name for name, arch in ARCHITECTURES.items() if arch.representation == representation)


# the schema's enums that come from these tables: `x-enum: <key>` in the schema file becomes `enum: [...]`
SCHEMA_ENUMS: dict[str, tuple[str, ...]] = {
    "representations": REPRESENTATIONS,
    "point_architectures": architectures_of("point"),
    "voxel_architectures": architectures_of("voxel"),
    "voxel_stacks": VOXEL_STACKS,
    "export_targets": KNOWN_TARGETS,
    "corpus_meshes": tuple(sorted(CORPUS_MESHES)),
}


def run_encoders(run: Mapping[str, Any]) -> dict[str, str]:
    """Representation → architecture of the encoders a validated pretraining run trains, point first."""
    blocks = {"point": run["backbone"], "voxel": run.get("voxel_backbone") or {}}
    return {name: blocks[name].get("name") for name in REPRESENTATIONS if name in run["representations"]}


def default_export_targets(encoders: Mapping[str, str | None]) -> list[str]:
    """The default targets of every encoder, in representation order, each once."""
    known = [ARCHITECTURES[arch] for arch in encoders.values() if arch in ARCHITECTURES]
    targets = [target for arch in known for target in arch.default_targets]
    return list(dict.fromkeys(targets))


def describe_encoders(encoders: Mapping[str, str | None]) -> str:
    found = [f"a {_title(arch)} {name} encoder" for name, arch in encoders.items()]
    return " and ".join(found) or "no encoder"


def _title(arch: str | None) -> str:
    return ARCHITECTURES[arch].title if arch in ARCHITECTURES else str(arch)


def _need(arch: str) -> str:
    representation = ARCHITECTURES[arch].representation
    block = "voxel_backbone" if representation == "voxel" else "backbone"
    return f"a {_title(arch)} {representation} encoder ({block}.name: {arch})"


def source_representation(target: str, encoders: Mapping[str, str | None]) -> str | None:
    """The representation whose encoder `target` is made from, or None when the encoders cannot make it."""
    for arch in EXPORT_TARGETS[target]:
        representation = ARCHITECTURES[arch].representation
        if encoders.get(representation) == arch:
            return representation
    return None


def what_target_needs(target: str) -> str:
    """`target`'s requirement in words, e.g. "a PointNet++ point encoder (backbone.name: pointnet2_ssg)"."""
    return " or ".join(_need(arch) for arch in EXPORT_TARGETS[target])


def evaluated_tasks(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each enabled run → the built-in evaluation tasks it gets when it trains a point encoder (what the
    evaluation scores): its `evaluation.tasks`, else all of them; none for a voxel-only run."""
    tasks = sorted(config["evaluate"]["tasks"])
    return {
        name: sorted(run.get("evaluation", {}).get("tasks", tasks)) if "point" in run_encoders(run) else []
        for name, run in sorted(config["pretrain"].items())
        if run["enabled"]
    }
