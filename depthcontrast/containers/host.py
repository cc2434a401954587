"""Host-side preparation of a build: the Debian base rootfs, the hash-locked requirements, the locked wheels and
the staged build context. Nothing here asks a registry by name: pip, uv and apt use the machine's own settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from depthcontrast.architectures import MINKOWSKI
from depthcontrast.containers.images import (
    BUILD,
    CPU,
    DEBIAN_SUITE,
    DOCKER,
    ROOT,
    SOURCE_DATE_EPOCH,
    ContainerError,
    Image,
)
from depthcontrast.io_utils import sha256_file

PACKAGE_FILES = ("pyproject.toml", "README.md", "depthcontrast")
LOCK_LINE = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
# glibc 2.36 (bookworm) and 2.39 (Ubuntu 24.04): wheels up to manylinux_2_35 run in both images
PLATFORMS = [f"--platform=manylinux_2_{minor}_x86_64" for minor in (35, 34, 28, 27, 17)] + [
    "--platform=manylinux2014_x86_64"
]
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


def say(message: str) -> None:
    print(f"[containers] {message}", flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; a failure is a ContainerError naming it (with the end of its output when captured)."""
    say(" ".join(command))
    try:
        result = subprocess.run(command, **kwargs)
    except FileNotFoundError:
        raise ContainerError(f"{command[0]}: not found; install it (docs/CONTAINERS.md lists the packages)") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout or "") if kwargs.get("capture_output") else ""
        tail = f": {output.strip().splitlines()[-1]}" if output.strip() else ""
        raise ContainerError(f"`{' '.join(command[:3])} ...` exited {result.returncode}{tail}")
    return result


# ---------------------------------------------------------------- the base rootfs
def debian_mirror() -> str:
    """The first Debian archive URI of this machine's apt sources (deb822 or one-line format)."""
    files = sorted(APT_SOURCES[0].glob("*.sources")) + sorted(APT_SOURCES[0].glob("*.list")) + [APT_SOURCES[1]]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    raise ContainerError("no Debian archive in /etc/apt/sources.list(.d): pass --mirror URI")


def base_packages() -> list[str]:
    lines = (DOCKER / "base" / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def write_rootfs(out: Path, mirror: str | None = None) -> Path:
    """mmdebstrap --variant=minbase bookworm with SOURCE_DATE_EPOCH: the same packages give the same bytes."""
    mirror = mirror or debian_mirror()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part.tar")
    command = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet", f"--include={','.join(base_packages())}"]
    command += ['--aptopt=Acquire::Retries "3"', DEBIAN_SUITE, str(partial)]
    command += [f"deb {mirror} {DEBIAN_SUITE} main", f"deb {mirror} {DEBIAN_SUITE}-updates main"]
    start = time.monotonic()
    run(command, env={**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)})
    partial.replace(out)
    say(f"rootfs {out} in {time.monotonic() - start:.0f} s")
    return out


def rootfs_packages(rootfs: Path) -> dict[str, str]:
    """Debian package -> version, read from the rootfs's dpkg status file."""
    import tarfile

    with tarfile.open(rootfs) as archive:
        member = next(m for m in archive.getmembers() if m.name.lstrip("./") == "var/lib/dpkg/status")
        status = archive.extractfile(member).read().decode()
    packages = {}
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version): (.+)$", stanza, re.M))
        if "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(packages.items()))


# ---------------------------------------------------------------- lock files
def compile_lock(image: Image) -> Path:
    """uv pip compile --generate-hashes: the image's pins + pyproject.toml's dependencies, for its Python.
    The CPU flavours take envs/constraints.txt too, so they hold the versions the tests run with."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    command = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header"]
    command += ["--python-version", image.python, "--python-platform", "x86_64-manylinux_2_35"]
    if image.flavour == CPU:
        command += ["-c", str(ROOT / "envs" / "constraints.txt")]
        command += find_links_options()
    partial = image.lock.with_suffix(".part")
    command += [str(image.requirements.relative_to(ROOT)), "pyproject.toml", "-o", str(partial)]
    run(command, cwd=ROOT)
    header = (
        f"# {image.name}: `python -m depthcontrast.containers lock` from {image.requirements.name} + pyproject.toml\n"
    )
    body = partial.read_text()
    partial.unlink()
    body = re.sub(r"^--find-links .*\n", "", body, flags=re.M)  # a folder of this machine: not part of the lock
    image.lock.write_text(header + body)
    say(f"{image.lock.relative_to(ROOT)}: {len(locked_wheels(image.lock))} pinned packages")
    return image.lock


def find_links_options() -> list[str]:
    """pip's configured find-links folders (`pip config list`), for uv, which does not read pip's config."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    folders = re.findall(r"find-links='([^']+)'", out)
    return [option for folder in dict.fromkeys(folders) for option in ("--find-links", folder)]


def locked_wheels(lock: Path) -> dict[str, tuple[str, set[str]]]:
    """Lock file -> {normalised name: (version, allowed sha256s)}; every pin must carry hashes."""
    text = lock.read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        match = LOCK_LINE.match(line.strip())
        if match:
            hashes = set(HASH.findall(line))
            if not hashes:
                raise ContainerError(f"{lock}: {match.group(1)} has no --hash; regenerate with `containers lock`")
            entries[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = (match.group(2), hashes)
    if not entries:
        raise ContainerError(f"{lock}: no pinned packages")
    return entries


# ---------------------------------------------------------------- wheels and the build context
def lock_subset(lock: Path, names: list[str], out: Path) -> Path:
    """The lock's entries (with their hashes) for the named packages only, as a requirements file `out`."""
    wanted = {re.sub(r"[-_.]+", "-", name).lower() for name in names}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    kept = [
        b
        for b in blocks
        if LOCK_LINE.match(b) and re.sub(r"[-_.]+", "-", LOCK_LINE.match(b).group(1)).lower() in wanted
    ]
    missing = wanted - {re.sub(r"[-_.]+", "-", LOCK_LINE.match(b).group(1)).lower() for b in kept}
    if missing:
        raise ContainerError(f"{lock}: no pin for {', '.join(sorted(missing))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(block.rstrip() for block in kept) + "\n")
    return out


def download_wheels(image: Image, wheelhouse: Path, lock: Path | None = None) -> list[Path]:
    """pip download the lock's wheels (for the image's platform and Python) into wheelhouse, reusing those there;
    returns the lock's wheel files. `lock`: a subset of the image's lock (lock_subset) instead of all of it."""
    lock = lock or image.lock
    wanted = locked_wheels(lock)
    have = {path: sha256_file(path) for path in _distributions(wheelhouse)}
    matching = [path for path, digest in have.items() if any(digest in hashes for _, hashes in wanted.values())]
    found = {_wheel_name(path) for path in matching}
    if not set(wanted) <= found:
        # --no-deps: the lock is complete; a package without wheels comes as its sdist (built in the image)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--require-hashes", *PLATFORMS, "--python-version", image.python]
        command += ["-d", str(wheelhouse), "-r", str(lock)]
        start = time.monotonic()
        run(command)
        say(f"downloaded {len(set(wanted) - found)} wheels in {time.monotonic() - start:.0f} s into {wheelhouse}")
        matching = [p for p in _distributions(wheelhouse) if any(sha256_file(p) in h for _, h in wanted.values())]
    names = {_wheel_name(path) for path in matching}
    missing = sorted(set(wanted) - names)
    if missing:
        raise ContainerError(f"{wheelhouse}: no wheel with the locked hash for {', '.join(missing)}")
    return sorted(path for path in matching if _wheel_name(path) in wanted)


def _distributions(folder: Path) -> list[Path]:
    """Wheels and sdists in folder."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))


def _wheel_name(path: Path) -> str:
    """The normalised project name of a wheel or sdist file name."""
    stem = path.name.removesuffix(".tar.gz").removesuffix(".zip")
    return re.sub(
        r"[-_.]+", "-", stem.rsplit("-", 1)[0] if not path.name.endswith(".whl") else stem.split("-")[0]
    ).lower()


def _copy_tree(source: Path, target: Path) -> None:
    """Copy files with fixed modes (0644, 0755 for executables and folders): the checkout's umask stays out."""
    for path in sorted(source.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        out = target / path.relative_to(source)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            out.chmod(0o755)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            out.chmod(0o755 if os.access(path, os.X_OK) else 0o644)


def _place(source: Path, target: Path) -> None:
    """Hard-link (same file system) or copy one file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def stage_context(image: Image, wheels: list[Path], minkowski_cache: Path | None, context: Path) -> Path:
    """The build context: this package, docker/steps.sh, the recipe's folder, wheels/ (only the locked wheels)
    and, for the MinkowskiEngine image, minkowski-cache/ (the host cache's sdist and wheels, maybe empty)."""
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    for name in PACKAGE_FILES:
        source = ROOT / name
        if source.is_dir():
            _copy_tree(source, context / name)
        else:
            shutil.copyfile(source, context / name)
            (context / name).chmod(0o644)
    _copy_tree(DOCKER / image.stack, context / "docker" / image.stack)
    shutil.copyfile(DOCKER / "steps.sh", context / "docker" / "steps.sh")
    (context / "docker" / "steps.sh").chmod(0o644)
    for wheel in wheels:
        _place(wheel, context / "wheels" / wheel.name)
    (context / "wheels").mkdir(exist_ok=True)
    if image.stack == MINKOWSKI:
        seed = context / "minkowski-cache"
        seed.mkdir()
        if minkowski_cache is not None and minkowski_cache.is_dir():
            finished = [record.parent for record in (minkowski_cache / "wheels").glob("*/build.json")]
            for folder in [minkowski_cache / "sdist", *finished]:
                for path in sorted(folder.glob("*")):
                    if path.is_file() and not path.name.endswith(".part"):
                        _place(path, seed / path.relative_to(minkowski_cache))
    return context


def default_minkowski_cache() -> Path:
    """The cache `python -m depthcontrast.minkowski_build` uses by default."""
    root = os.environ.get("DEPTHCONTRAST_CACHE") or Path.home() / ".cache" / "depthcontrast"
    return Path(root) / "minkowski"


def default_wheelhouse() -> Path:
    return BUILD / "wheels"
