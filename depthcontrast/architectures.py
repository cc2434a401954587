"""Which encoder architectures exist, and which of them each export target is made from (no torch here,
so the config check can use it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ARCHITECTURES = {
    "pointnet2_ssg": "PointNet++",
    "pointnet2_msg": "PointNet-MSG",
    "minkunet": "MinkUNet",
    "spconv_unet": "sparse UNet (spconv)",
}
# target → the (format, architecture) encoders it can be made from, any one of them
TARGET_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "votenet": (("point", "pointnet2_ssg"),),
    "h3dnet": (("point", "pointnet2_ssg"),),  # H3DNet's backbones are VoteNet's Pointnet2Backbone
    "plain": (("point", "pointnet2_ssg"), ("point", "pointnet2_msg")),
    "minkunet_seg": (("voxel", "minkunet"),),
    "openpcdet": (("point", "pointnet2_msg"), ("voxel", "spconv_unet")),  # PointRCNN's or Part-A2's backbone_3d
}
KNOWN_TARGETS = tuple(TARGET_NEEDS)
# what a run exports when its config names no export_targets, by encoder architecture
DEFAULT_TARGETS = {
    "pointnet2_ssg": ("votenet", "plain"),
    "pointnet2_msg": ("openpcdet", "plain"),
    "spconv_unet": ("openpcdet",),
    "minkunet": ("minkunet_seg",),
}
# voxel encoders needing a stack this package does not have yet: said so instead of "train another run"
# (none now: MinkUNet34 is built on spconv, models/minkunet.py)
VOXEL_STACKS: dict[str, str] = {}


def run_encoders(run: Mapping[str, Any]) -> dict[str, str]:
    """Format → architecture of the encoders a validated pretraining run trains."""
    formats = run.get("formats") or ["point"]
    names = {"point": run["backbone"]["name"], "voxel": (run.get("voxel_backbone") or {}).get("name")}
    return {name: names.get(name) for name in formats}


def default_export_targets(encoders: Mapping[str, str | None]) -> list[str]:
    """The default targets of every encoder, in format order, each once."""
    targets = [target for arch in encoders.values() for target in DEFAULT_TARGETS.get(arch or "", ())]
    return list(dict.fromkeys(targets))


def describe_encoders(encoders: Mapping[str, str | None]) -> str:
    found = [f"a {ARCHITECTURES.get(arch or '', arch)} {name} encoder" for name, arch in encoders.items()]
    return " and ".join(found) or "no encoder"


def _need(name: str, arch: str) -> str:
    if arch in VOXEL_STACKS:
        stack = VOXEL_STACKS[arch]
        return f"a {ARCHITECTURES[arch]} {name} encoder (needs the {stack} voxel stack, not in this package yet)"
    block = "voxel_backbone" if name == "voxel" else "backbone"
    return f"a {ARCHITECTURES[arch]} {name} encoder ({block}.name: {arch})"


def source_format(target: str, encoders: Mapping[str, str | None]) -> str | None:
    """The format whose encoder `target` is made from, or None when the encoders cannot make it."""
    for name, arch in TARGET_NEEDS[target]:
        if encoders.get(name) == arch:
            return name
    return None


def what_target_needs(target: str) -> str:
    """`target`'s requirement in words, e.g. "a PointNet++ point encoder (backbone.name: pointnet2_ssg)"."""
    return " or ".join(_need(name, arch) for name, arch in TARGET_NEEDS[target])


def evaluated_tasks(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each enabled run → the built-in evaluation tasks it gets: all of them when it trains a point encoder
    (what the evaluation scores), none for a voxel-only run."""
    tasks = sorted(config["evaluate"]["tasks"])
    return {
        name: tasks if "point" in run_encoders(run) else []
        for name, run in sorted(config["pretrain"].items())
        if run["enabled"]
    }
