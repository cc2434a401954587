"""The container engine: podman (tested), docker (BuildKit) or buildah, behind one small interface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from depthcontrast.containers.host import run, say
from depthcontrast.containers.images import SOURCE_DATE_EPOCH, ContainerError, write_atomic

ENGINES = ("podman", "docker", "buildah")

# What rootful podman needs in a sandbox without systemd or CAP_SYS_RESOURCE (docs/CONTAINERS.md)
SANDBOX_CONF = """\
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def write_sandbox_conf(path: Path) -> Path:
    """A containers.conf for podman where systemd and cgroup v2 delegation are missing; point CONTAINERS_CONF at it."""
    write_atomic(path, SANDBOX_CONF)
    return path


@dataclass(frozen=True)
class Engine:
    """One engine binary; `build` makes an image from a context with fixed timestamps and returns its ID."""

    name: str

    @staticmethod
    def find(preferred: str | None = None) -> Engine:
        names = [preferred] if preferred else list(ENGINES)
        for name in names:
            if name not in ENGINES:
                raise ContainerError(f"unknown engine '{name}': choose from {', '.join(ENGINES)}")
            if shutil.which(name):
                return Engine(name)
        raise ContainerError(
            f"no container engine found ({' or '.join(names)}): install podman (apt-get install podman)"
        )

    def version(self) -> str:
        out = subprocess.run([self.name, "--version"], capture_output=True, text=True).stdout.strip()
        return out.splitlines()[0] if out else self.name

    def build(self, context: Path, recipe: Path, tag: str, args: dict[str, str], no_cache: bool, pull: bool) -> str:
        """Build recipe in context as tag; every file and the image dated SOURCE_DATE_EPOCH; returns the image ID."""
        iidfile = context.parent / f"{context.name}.iid"
        build_args = [f"--build-arg={key}={value}" for key, value in sorted(args.items())]
        if self.name == "docker":  # BuildKit: SOURCE_DATE_EPOCH dates the image, rewrite-timestamp the layers
            command = ["docker", "buildx", "build", "--output", "type=docker,rewrite-timestamp=true"]
        else:  # podman and buildah: --timestamp dates the image and every file in its layers; no history, whose
            # comments name the engine's intermediate images (those differed between two builds of the same layers)
            command = [self.name, "build", f"--timestamp={SOURCE_DATE_EPOCH}", "--omit-history", "--layers"]
            command.append("--pull=missing" if pull else "--pull=never")
        command += [*build_args, "--no-cache"] if no_cache else build_args
        command += ["-f", str(recipe), "-t", tag, "--iidfile", str(iidfile), str(context)]
        run(command)
        image_id = iidfile.read_text().strip()
        iidfile.unlink()
        return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"

    def inspect(self, ref: str) -> dict:
        if self.name == "buildah":
            out = run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True).stdout
            return json.loads(out)
        out = run([self.name, "image", "inspect", ref], capture_output=True, text=True).stdout
        return json.loads(out)[0]

    def digest(self, ref: str) -> str | None:
        """The manifest digest the engine reports for a local image (None where it keeps none)."""
        info = self.inspect(ref)
        return info.get("Digest") or info.get("FromImageDigest") or None

    def export(self, ref: str, archive: Path) -> Path:
        """An OCI archive of the image (a tar with an OCI image layout)."""
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".part")
        partial.unlink(missing_ok=True)
        if self.name == "podman":
            run(["podman", "save", "--format", "oci-archive", "-o", str(partial), ref])
        elif self.name == "buildah":
            run(["buildah", "push", ref, f"oci-archive:{partial}"])
        else:
            run(["docker", "save", "-o", str(partial), ref])  # Docker 25+ writes an OCI layout in the tar
        partial.replace(archive)
        return archive

    def run_in(
        self, ref: str, command: list[str], mounts: list[tuple[Path, str]] = (), workdir: str | None = None
    ) -> None:
        """Run command in a throw-away container of the image (no network)."""
        if self.name == "buildah":
            raise ContainerError("buildah runs no images: use podman or docker for `smoke`")
        options = ["--rm", "--network=none"]
        for host, inside in mounts:
            options += ["-v", f"{host}:{inside}"]
        if workdir:
            options += ["-w", workdir]
        run([self.name, "run", *options, ref, *command])


def sif_tool() -> str:
    for name in ("apptainer", "singularity"):
        if shutil.which(name):
            return name
    raise ContainerError(
        "apptainer not found: copy the OCI archive to a machine that has it and run "
        "`apptainer build IMAGE.sif oci-archive://IMAGE.oci.tar` there (docs/CONTAINERS.md)"
    )


def to_sif(archive: Path, sif: Path) -> Path:
    """apptainer build SIF from an OCI archive (SIF bytes differ between builds: compare OCI image IDs)."""
    tool = sif_tool()
    partial = sif.with_name(sif.name + ".part")
    partial.unlink(missing_ok=True)
    run([tool, "build", "--force", str(partial), f"oci-archive://{archive}"], env={**os.environ})
    partial.replace(sif)
    say(f"{sif} from {archive}")
    return sif
