"""The MinkowskiEngine wheel build: tools check, sdist, patches, compile, cache, install (see the package docstring)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from depthcontrast.io_utils import sha256_file
from depthcontrast.minkowski_build.patches import CPU, CUDA, PatchError, apply_patches, patch_set_hash

VERSION = "0.5.4"
SDIST_NAME = f"MinkowskiEngine-{VERSION}.tar.gz"
SDIST_SHA256 = "b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94"
DEFAULT_ARCH_LIST = "8.0;9.0"
DEFAULT_CXXFLAGS = "-g0"  # no debug info: the sdist's -O3 stays; see docs/MINKOWSKI.md for what it saves
LOG_TAIL_LINES = 40
BLAS_INCLUDE_DIRS = ("/usr/include", "/usr/include/x86_64-linux-gnu", "/usr/local/include")  # where cblas.h is
NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")


class BuildError(RuntimeError):
    """A failed build step: `str()` names the step, the problem and what to install or do."""

    def __init__(self, step: str, message: str):
        super().__init__(f"MinkowskiEngine build, step '{step}': {message}")


def say(message: str) -> None:
    print(f"[minkowski-build] {message}", flush=True)


def default_cache() -> Path:
    """$DEPTHCONTRAST_CACHE/minkowski, else ~/.cache/depthcontrast/minkowski."""
    root = os.environ.get("DEPTHCONTRAST_CACHE") or Path.home() / ".cache" / "depthcontrast"
    return Path(root) / "minkowski"


@dataclass(frozen=True)
class BuildKey:
    """Everything the wheel depends on; its hash names the cache folder."""

    sdist_sha256: str
    patch_set: str
    torch: str
    python: str
    flavour: str
    arch_list: str
    cxxflags: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- step: tools
def torch_version() -> str:
    try:
        import torch
    except ImportError as error:
        message = f"torch is not importable from {sys.executable} ({error}): install torch first"
        raise BuildError("tools", message) from None
    return torch.__version__


def cuda_home() -> Path:
    """CUDA_HOME, else the folder above the nvcc on PATH."""
    if os.environ.get("CUDA_HOME"):
        return Path(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise BuildError("tools", "nvcc not found: install the CUDA toolkit or set CUDA_HOME (or build with --cpu)")
    return Path(nvcc).resolve().parent.parent


def check_tools(flavour: str) -> None:
    """Fail early, naming what to install: a C++ compiler, Python headers, ninja, BLAS headers, nvcc."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise BuildError("tools", "no C++ compiler: install g++ (Debian/Ubuntu: apt-get install g++)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        package = f"python{sys.version_info.major}.{sys.version_info.minor}-dev"
        raise BuildError("tools", f"{include} is missing: install the Python headers (apt-get install {package})")
    if shutil.which("ninja") is None and not (Path(sys.executable).parent / "ninja").exists():
        raise BuildError("tools", "ninja not found: pip install ninja (the build is parallel only with ninja)")
    blas_headers = [Path(p) / "cblas.h" for p in BLAS_INCLUDE_DIRS]
    if not any(path.exists() for path in blas_headers) and not os.environ.get("CPATH"):
        raise BuildError("tools", "cblas.h not found: install OpenBLAS (apt-get install libopenblas-dev)")
    if flavour == CUDA and not (cuda_home() / "bin" / "nvcc").exists():
        raise BuildError("tools", f"{cuda_home()}/bin/nvcc not found: set CUDA_HOME to the CUDA toolkit")


# ---------------------------------------------------------------- step: sdist
def _pip_cert() -> str | None:
    """The CA bundle pip is configured with (`cert`), if any."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    match = re.search(r"\.cert='([^']+)'", out)
    return match.group(1) if match else None


def download_sdist(folder: Path) -> Path:
    """The sdist through pip's own configured index. pip saves it where its metadata step works; else pip names
    the file's link (-vvv) and the file is fetched from that link."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-vvv", "--no-deps", "--no-binary", ":all:"]
    command += ["--no-build-isolation", "-d", str(folder), f"MinkowskiEngine=={VERSION}"]
    say(f"asking pip's configured index for {SDIST_NAME}")
    result = subprocess.run(command, capture_output=True, text=True)
    saved = folder / SDIST_NAME
    if saved.exists():
        return saved
    links = re.findall(r"Found link (\S+/" + re.escape(SDIST_NAME) + r")\b", result.stdout + result.stderr)
    if not links:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
        raise BuildError("sdist", f"pip's index has no {SDIST_NAME} (is an index reachable?). pip said:\n{tail}")
    cert = _pip_cert()
    context = ssl.create_default_context(cafile=cert) if cert else None
    partial = saved.with_suffix(".part")
    with urllib.request.urlopen(links[0], context=context, timeout=120) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out)
    partial.replace(saved)
    return saved


def obtain_sdist(cache: Path, given: Path | None) -> Path:
    """--sdist, else the cached sdist, else a download; its sha256 checked before use."""
    cached = cache / "sdist" / SDIST_NAME
    if given is not None:
        if not given.is_file():
            raise BuildError("sdist", f"{given}: no such file")
        source = given
    elif cached.exists():
        source = cached
    else:
        try:
            source = download_sdist(cached.parent)
        except OSError as error:
            raise BuildError("sdist", f"download failed ({error}); pass a local copy with --sdist FILE") from None
    actual = sha256_file(source)
    if actual != SDIST_SHA256:
        raise BuildError("sdist", f"{source}: sha256 {actual}, expected {SDIST_SHA256} (a different file)")
    if source != cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, cached.with_suffix(".part"))
        cached.with_suffix(".part").replace(cached)
    say(f"sdist {source} (sha256 checked)")
    return cached


# ---------------------------------------------------------------- step: compile
def _environment(flavour: str, jobs: int, arch_list: str, cxxflags: str) -> dict[str, str]:
    env = {**os.environ, "MAX_JOBS": str(jobs), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this interpreter's ninja
    env["CFLAGS"] = f"{env.get('CFLAGS', '')} {cxxflags}".strip()
    if flavour == CUDA:
        home = cuda_home()
        env["CUDA_HOME"] = str(home)
        env["TORCH_CUDA_ARCH_LIST"] = arch_list
        cccl = home / "include" / "cccl"  # CUDA 13 moved thrust and cub here
        if cccl.is_dir():
            env["CPLUS_INCLUDE_PATH"] = os.pathsep.join(p for p in (str(cccl), env.get("CPLUS_INCLUDE_PATH")) if p)
    return env


def compile_wheel(source: Path, out: Path, flavour: str, jobs: int, arch_list: str, cxxflags: str, log: Path) -> Path:
    """setup.py bdist_wheel in the patched tree `source`; ninja's [k/N] lines become progress lines."""
    command = [sys.executable, "setup.py", "bdist_wheel", "-d", str(out), "--blas=openblas"]
    command.append("--force_cuda" if flavour == CUDA else "--cpu_only")
    say(f"compiling ({flavour}, {jobs} jobs{', arch ' + arch_list if flavour == CUDA else ''}); log: {log}")
    start, shown = time.monotonic(), -1
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=source,
            env=_environment(flavour, jobs, arch_list, cxxflags),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            log_file.flush()
            match = NINJA_PROGRESS.match(line)
            if match and int(match.group(1)) != shown:
                shown = int(match.group(1))
                say(f"compile {match.group(1)}/{match.group(2)} ({time.monotonic() - start:.0f} s)")
        code = process.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-LOG_TAIL_LINES:])
        hint = "a missing header or library is named above (g++, libopenblas-dev, the CUDA toolkit)"
        raise BuildError("compile", f"setup.py exited {code}; the end of {log}:\n{tail}\n{hint}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError("compile", f"expected one wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


# ---------------------------------------------------------------- the whole build
def build(
    flavour: str,
    cache: Path,
    sdist: Path | None = None,
    arch_list: str = DEFAULT_ARCH_LIST,
    jobs: int | None = None,
    cxxflags: str = DEFAULT_CXXFLAGS,
    rebuild: bool = False,
) -> Path:
    """The cached wheel for (this sdist, patch set, torch, Python, flavour, arch list, flags); built when missing."""
    key = BuildKey(
        sdist_sha256=SDIST_SHA256,
        patch_set=patch_set_hash(flavour),
        torch=torch_version(),
        python=sys.implementation.cache_tag,
        flavour=flavour,
        arch_list=arch_list if flavour == CUDA else "",
        cxxflags=cxxflags,
    )
    folder = cache / "wheels" / key.digest()
    record = folder / "build.json"
    if record.exists() and not rebuild:
        wheel = folder / json.loads(record.read_text())["wheel"]
        if wheel.exists():
            say(f"cached wheel {wheel} (key {key.digest()})")
            return wheel
    check_tools(flavour)
    sdist_path = obtain_sdist(cache, sdist)
    start = time.monotonic()
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minkowski-build-", dir=cache / "wheels") as tmp:
        work = Path(tmp)
        with tarfile.open(sdist_path) as archive:
            archive.extractall(work, filter="data")
        source = work / f"MinkowskiEngine-{VERSION}"
        try:
            count = apply_patches(source, flavour)
        except PatchError as error:
            raise BuildError("patch", str(error)) from None
        say(f"applied {count} patches ({flavour} set {key.patch_set[:12]})")
        log = cache / "wheels" / f"build-{key.digest()}.log"
        wheel = compile_wheel(source, work / "dist", flavour, jobs or os.cpu_count() or 1, arch_list, cxxflags, log)
        seconds = time.monotonic() - start
        staged = work / "cached"
        staged.mkdir()
        shutil.move(str(wheel), staged / wheel.name)
        info = {**asdict(key), "wheel": wheel.name, "wheel_sha256": sha256_file(staged / wheel.name)}
        info["build_seconds"] = round(seconds, 1)
        (staged / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staged.replace(folder)
    say(f"built {wheel.name} in {seconds:.0f} s (sha256 {info['wheel_sha256'][:16]}...) -> {folder}")
    return folder / wheel.name


def install(wheel: Path) -> None:
    """pip-install the wheel into this interpreter (no dependencies: torch and numpy are there) and import it."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)]
    if subprocess.run(command).returncode != 0:
        raise BuildError("install", f"pip could not install {wheel}")
    probe = "import MinkowskiEngine as ME; print(ME.__version__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError("install", f"import MinkowskiEngine failed after installing {wheel}:\n{result.stderr[-2000:]}")
    say(f"installed MinkowskiEngine {result.stdout.strip()} into {sys.prefix}")


def installed_version() -> str | None:
    """The MinkowskiEngine version installed in this interpreter, without importing it."""
    from importlib import metadata

    try:
        return metadata.version("MinkowskiEngine")
    except metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m depthcontrast.minkowski_build", description=__doc__)
    flavour = parser.add_mutually_exclusive_group()
    flavour.add_argument("--cpu", dest="flavour", action="store_const", const=CPU, help="CPU-only build (default)")
    flavour.add_argument("--cuda", dest="flavour", action="store_const", const=CUDA, help="CUDA build (--force_cuda)")
    parser.set_defaults(flavour=CPU)
    parser.add_argument("--arch-list", default=os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST))
    parser.add_argument("--cache", type=Path, default=default_cache(), help="wheel and sdist cache folder")
    parser.add_argument("--sdist", type=Path, help=f"a local {SDIST_NAME} (checked by sha256)")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
    parser.add_argument("--cxxflags", default=DEFAULT_CXXFLAGS, help="extra compiler flags (default %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="build even when the cache has the wheel")
    parser.add_argument("--install", action="store_true", help="pip-install the wheel into this interpreter")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when MinkowskiEngine is installed")
    parser.add_argument("--print-wheel", action="store_true", help="print only the wheel's path on stdout at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.if_missing and installed_version() == VERSION:
        say(f"MinkowskiEngine {VERSION} is installed in {sys.prefix}")
        return 0
    try:
        wheel = build(args.flavour, args.cache, args.sdist, args.arch_list, args.jobs, args.cxxflags, args.rebuild)
        if args.install:
            install(wheel)
    except BuildError as error:
        print(f"[minkowski-build] error: {error}", file=sys.stderr)
        return 1
    if args.print_wheel:
        print(wheel)
    return 0
