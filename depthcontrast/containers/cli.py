"""`python -m depthcontrast.containers VERB ...`: base, lock, build, export, sif, smoke (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from depthcontrast.architectures import MINKOWSKI
from depthcontrast.containers import host
from depthcontrast.containers.engine import Engine, to_sif
from depthcontrast.containers.images import (
    BASE_REF,
    BUILD,
    CPU,
    DEBIAN_SUITE,
    IMAGE_LOCK,
    IMAGES,
    ROOT,
    SOURCE_DATE_EPOCH,
    ContainerError,
    image,
    read_image_lock,
    recipe_base,
    record,
)
from depthcontrast.io_utils import sha256_file


def build_base(engine: Engine, lock: Path, mirror: str | None, fresh: bool, no_cache: bool) -> str:
    """The CPU flavours' base image from an mmdebstrap rootfs (written once, kept under docker/.build/base)."""
    rootfs = BUILD / "base" / "rootfs.tar"
    if fresh or not rootfs.exists():
        host.write_rootfs(rootfs, mirror)
    context = BUILD / "base" / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "rootfs.tar").unlink(missing_ok=True)
    host._place(rootfs, context / "rootfs.tar")
    recipe = ROOT / "docker" / "base" / "Containerfile"
    start = time.monotonic()
    image_id = engine.build(context, recipe, BASE_REF, {}, no_cache=no_cache, pull=False)
    host.say(f"base {BASE_REF} {image_id} in {time.monotonic() - start:.0f} s")
    packages = host.rootfs_packages(rootfs)
    entry = {"ref": BASE_REF, "image_id": image_id, "suite": DEBIAN_SUITE, "rootfs_sha256": sha256_file(rootfs)}
    record(lock, "base", None, {**entry, "packages": packages})
    return image_id


def base_id(engine: Engine, lock: Path, args: argparse.Namespace) -> str:
    """The recorded base image if the engine still has it, else a fresh build."""
    recorded = read_image_lock(lock).get("base", {}).get("image_id")
    if recorded:
        try:
            if engine.inspect(recorded.removeprefix("sha256:")):
                return recorded
        except ContainerError:
            pass
    return build_base(engine, lock, args.mirror, fresh=False, no_cache=False)


def source_revision() -> str:
    """The commit the build context came from, `+changes` when the package or docker/ differ from it."""
    import subprocess

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", *host.PACKAGE_FILES, "docker")
    return f"{commit}+changes" if changed else commit


def recipe_entry(name: str) -> dict[str, str]:
    """What the image lock says of an image before it is built: recipe, lock file and its hash, base."""
    spec = IMAGES[name]
    entry = {"ref": spec.ref, "recipe": str(spec.recipe.relative_to(ROOT)), "lock": str(spec.lock.relative_to(ROOT))}
    entry["lock_sha256"] = sha256_file(spec.lock)
    if spec.flavour != CPU:
        entry["base"] = recipe_base(spec.recipe)
    return entry


def build_image(name: str, engine: Engine, args: argparse.Namespace) -> str:
    spec = image(name)
    times: dict[str, float] = {}
    start = time.monotonic()
    wheels = host.download_wheels(spec, args.wheels)
    times["wheels"] = time.monotonic() - start
    cache = args.minkowski_cache if spec.stack == MINKOWSKI else None
    if cache is not None and not (cache / "sdist").is_dir():
        host.say(f"{cache}: no MinkowskiEngine sdist: the build compiles only if it can fetch one")
    context = host.stage_context(spec, wheels, cache, BUILD / "context" / name)
    build_args = {"FLAVOUR": spec.flavour, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    if spec.flavour == CPU:
        build_args["BASE"] = base_id(engine, args.lock_file, args).removeprefix("sha256:")
    start = time.monotonic()
    image_id = engine.build(
        context,
        context / "docker" / spec.stack / "Containerfile",
        spec.ref,
        build_args,
        no_cache=args.no_cache,
        pull=spec.flavour != CPU,
    )
    times["build"] = time.monotonic() - start
    entry = {**recipe_entry(name), "image_id": image_id, "digest": engine.digest(spec.ref), "engine": engine.version()}
    entry["source"] = source_revision()
    if spec.flavour == CPU:
        entry["base"] = f"sha256:{build_args['BASE']}"
    record(args.lock_file, "images", name, entry)
    split = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in times.items())
    host.say(f"{name}: {image_id} ({split})")
    return image_id


def archive_path(name: str, out: Path) -> Path:
    return out / f"{name}.oci.tar"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m depthcontrast.containers", description=__doc__)
    parser.add_argument("--engine", choices=["podman", "docker", "buildah"], help="default: the first one found")
    parser.add_argument("--lock-file", type=Path, default=IMAGE_LOCK, help="image lock (default %(default)s)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    base = verbs.add_parser("base", help="the CPU flavours' Debian base image (mmdebstrap)")
    base.add_argument("--fresh", action="store_true", help="write a new rootfs even when one is there")
    base.add_argument("--no-cache", action="store_true")
    lock = verbs.add_parser("lock", help="compile the hash-locked requirements with uv")
    build = verbs.add_parser("build", help="build images and record their IDs in the lock file")
    build.add_argument("--no-cache", action="store_true", help="build every layer again")
    build.add_argument("--wheels", type=Path, default=host.default_wheelhouse(), help="host wheel folder (reused)")
    build.add_argument(
        "--minkowski-cache",
        type=Path,
        default=host.default_minkowski_cache(),
        help="the MinkowskiEngine build cache handed to the build (default %(default)s)",
    )
    wheels = verbs.add_parser("wheels", help="download an image's locked wheels (for a machine without an engine)")
    wheels.add_argument("image", metavar="IMAGE")
    wheels.add_argument("--out", type=Path, required=True, help="folder for the wheels and requirements.txt")
    wheels.add_argument("--only", nargs="+", metavar="PACKAGE", help="these packages of the lock only")
    export = verbs.add_parser("export", help="write OCI archives")
    sif = verbs.add_parser("sif", help="OCI archive -> Apptainer SIF (needs apptainer)")
    smoke = verbs.add_parser("smoke", help="run the smoke test inside each image")
    smoke.add_argument("--device", choices=["cpu", "cuda", "import"], default="cpu")
    for verb in (base, build):
        verb.add_argument("--mirror", help="Debian archive URI (default: this machine's apt sources)")
    for verb in (lock, build, export, sif, smoke):
        verb.add_argument("images", nargs="*", metavar="IMAGE", help=f"default: all of {', '.join(IMAGES)}")
    for verb in (export, sif):
        verb.add_argument("--out", type=Path, default=BUILD / "archives", help="folder (default %(default)s)")
    args = parser.parse_args(argv)
    if getattr(args, "images", None) == []:
        args.images = list(IMAGES) if args.verb in ("lock", "export", "sif") else [n for n in IMAGES if CPU in n]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for name in getattr(args, "images", []):
            image(name)
        if args.verb == "lock":
            for name in args.images:
                host.compile_lock(IMAGES[name])
                record(args.lock_file, "images", name, recipe_entry(name))
            return 0
        if args.verb == "wheels":
            spec = image(args.image)
            lock = host.lock_subset(spec.lock, args.only, args.out / "requirements.txt") if args.only else None
            if lock is None:
                lock = args.out / "requirements.txt"
                lock.parent.mkdir(parents=True, exist_ok=True)
                lock.write_text(spec.lock.read_text())
            files = host.download_wheels(spec, args.out, lock)
            host.say(f"{len(files)} files in {args.out}; install: pip install --no-index --find-links {args.out} "
                     f"--require-hashes --no-deps -r {lock}")  # fmt: skip
            return 0
        engine = Engine.find(args.engine)
        if args.verb == "base":
            build_base(engine, args.lock_file, args.mirror, args.fresh, args.no_cache)
        for name in getattr(args, "images", []):
            spec = IMAGES[name]
            if args.verb == "build":
                build_image(name, engine, args)
            elif args.verb == "export":
                archive = engine.export(spec.ref, archive_path(name, args.out))
                record(args.lock_file, "images", name, {"oci_archive": str(archive)})
                host.say(f"{archive} ({archive.stat().st_size / 1e6:.0f} MB)")
            elif args.verb == "sif":
                archive = archive_path(name, args.out)
                if not archive.exists():
                    raise ContainerError(
                        f"{archive}: no OCI archive; run `python -m depthcontrast.containers export {name}`"
                    )
                to_sif(archive, archive.with_name(f"{name}.sif"))
            elif args.verb == "smoke":
                command = [
                    "python",
                    "-m",
                    "depthcontrast.containers.smoke",
                    "--stack",
                    spec.stack,
                    "--device",
                    args.device,
                ]
                engine.run_in(spec.ref, command)
    except ContainerError as error:
        print(f"depthcontrast containers: error: {error}", file=sys.stderr)
        return 1
    return 0
