"""The image table, their recipes and lock files, and the image lock file (docker/images.lock.json)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthcontrast.architectures import MINKOWSKI, SPCONV

ROOT = Path(__file__).resolve().parents[2]  # the repository (the recipes live in docker/)
DOCKER = ROOT / "docker"
IMAGE_LOCK = DOCKER / "images.lock.json"
BUILD = DOCKER / ".build"  # git-ignored: base rootfs, wheels, build contexts, archives
SOURCE_DATE_EPOCH = 1796083200  # 2026-12-01T00:00:00Z: every file's date and the images' creation time
BASE_REF = "localhost/depthcontrast/base:bookworm"
DEBIAN_SUITE = "bookworm"
CPU, CUDA = "cpu", "cuda"


class ContainerError(RuntimeError):
    """A failed container step; `str()` is one line naming the file or command and what to do."""


@dataclass(frozen=True)
class Image:
    """One image: a recipe (docker/<stack>/Containerfile) built in one flavour (a build arg)."""

    name: str
    stack: str
    flavour: str
    python: str  # the interpreter's version in the image: the lock is resolved for it

    @property
    def recipe(self) -> Path:
        return DOCKER / self.stack / "Containerfile"

    @property
    def requirements(self) -> Path:
        """The pins the lock is compiled from (plus pyproject.toml's dependencies)."""
        return DOCKER / self.stack / f"requirements-{self.flavour}.in"

    @property
    def lock(self) -> Path:
        return DOCKER / self.stack / f"requirements-{self.flavour}.lock.txt"

    @property
    def ref(self) -> str:
        return f"localhost/depthcontrast/{self.stack}:{self.flavour}"


def recipe_base(recipe: Path) -> str:
    """The default of a recipe's `ARG BASE=` (the CUDA base, pinned by digest)."""
    match = re.search(r"^ARG BASE=(\S+)$", recipe.read_text(), re.M)
    if not match:
        raise ContainerError(f"{recipe}: no `ARG BASE=<image>@sha256:<digest>` line")
    return match.group(1)


IMAGES: dict[str, Image] = {
    "spconv-cuda": Image("spconv-cuda", SPCONV, CUDA, "3.12"),
    "minkowski-cuda": Image("minkowski-cuda", MINKOWSKI, CUDA, "3.12"),
    "spconv-cpu": Image("spconv-cpu", SPCONV, CPU, "3.11"),
    "minkowski-cpu": Image("minkowski-cpu", MINKOWSKI, CPU, "3.11"),
}


def image(name: str) -> Image:
    if name not in IMAGES:
        raise ContainerError(f"unknown image '{name}': choose from {', '.join(IMAGES)}")
    return IMAGES[name]


def write_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(text)
    partial.replace(path)


def read_image_lock(path: Path = IMAGE_LOCK) -> dict[str, Any]:
    """The image lock: {"source_date_epoch", "base": {...}, "images": {name: {...}}}; empty entries if absent."""
    if not path.exists():
        return {"source_date_epoch": SOURCE_DATE_EPOCH, "base": {}, "images": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ContainerError(f"{path}: not valid JSON ({error}); rebuild or restore it from git") from None
    if not isinstance(data.get("images"), dict):
        raise ContainerError(f"{path}: no 'images' mapping; rebuild or restore it from git")
    return data


def record(path: Path, section: str, name: str | None, entry: dict[str, Any]) -> None:
    """Merge entry into the lock's section ("base") or section[name] ("images"), atomically; builds running at
    the same time take turns (an flock on a sidecar file)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        data = read_image_lock(path)
        data["source_date_epoch"] = SOURCE_DATE_EPOCH
        if name is None:
            data[section] = {**data.get(section, {}), **entry}
        else:
            data.setdefault(section, {})[name] = {**data[section].get(name, {}), **entry}
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
