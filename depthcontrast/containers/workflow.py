"""What each rule's `container:` names (rules/common.smk): docker/containers.yaml + docker/images.lock.json.

The pretrain rule takes its run's stack (spconv for PointNet++, PointNet-MSG, sparse-UNet and MinkUNet-on-spconv
runs; minkowski for `voxel_backbone.stack: minkowski`) in the `pretrain_flavour`; every other rule the CPU
flavour of the spconv image. The names are files or URIs only: nothing is pulled or built here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depthcontrast.architectures import MINKOWSKI, SPCONV
from depthcontrast.containers.images import (
    CPU,
    CUDA,
    DOCKER,
    IMAGES,
    ContainerError,
    read_image_lock,
)

SETTINGS = DOCKER / "containers.yaml"
LOCATIONS = ("sif", "registry")
VERSION = "0.1.0"


def load_settings(path: Path | None = None) -> dict[str, Any]:
    """docker/containers.yaml (or $DEPTHCONTRAST_CONTAINERS), checked: one-line errors name the file and key."""
    import yaml

    path = path or Path(os.environ.get("DEPTHCONTRAST_CONTAINERS") or SETTINGS)
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ContainerError(f"{path}: cannot read the container settings ({error})") from None
    known = {"pretrain_flavour": CUDA, "location": "sif", "sif_dir": "docker/.build/archives", "registry": None}
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ContainerError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    settings = {**known, **settings}
    if settings["pretrain_flavour"] not in (CPU, CUDA):
        raise ContainerError(f"{path}: pretrain_flavour must be cpu or cuda, got {settings['pretrain_flavour']!r}")
    if settings["location"] not in LOCATIONS:
        raise ContainerError(f"{path}: location must be one of {', '.join(LOCATIONS)}, got {settings['location']!r}")
    if settings["location"] == "registry" and not settings["registry"]:
        raise ContainerError(f"{path}: location registry needs `registry:` (host/group the images were pushed to)")
    return settings


def run_stack(run: Mapping[str, Any]) -> str:
    """A validated pretrain run's sparse-conv stack: minkowski only for a MinkowskiEngine voxel backbone."""
    voxel = run.get("voxel_backbone") or {}
    return MINKOWSKI if voxel.get("stack") == MINKOWSKI else SPCONV


def image_uri(name: str, settings: Mapping[str, Any], lock: Mapping[str, Any]) -> str:
    """The SIF path or registry URI of one image."""
    spec = IMAGES[name]
    if settings["location"] == "sif":
        return str(Path(settings["sif_dir"]) / f"{name}.sif")
    digest = (lock.get("images", {}).get(name) or {}).get("digest")
    repository = f"docker://{str(settings['registry']).rstrip('/')}/depthcontrast-{spec.stack}"
    return f"{repository}@{digest}" if digest else f"{repository}:{spec.flavour}-{VERSION}"


class RuleContainers:
    """The `container:` of each rule, from the settings and lock files read once (when the workflow loads)."""

    def __init__(self, settings: Mapping[str, Any] | None = None, lock: Mapping[str, Any] | None = None):
        self.settings = settings if settings is not None else load_settings()
        self.lock = lock if lock is not None else read_image_lock()

    def cpu(self) -> str:
        """The CPU rules' image."""
        return image_uri(f"{SPCONV}-{CPU}", self.settings, self.lock)

    def pretrain(self, run: Mapping[str, Any]) -> str:
        """The pretrain rule's image: the run's stack in the pretrain flavour."""
        return image_uri(f"{run_stack(run)}-{self.settings['pretrain_flavour']}", self.settings, self.lock)
