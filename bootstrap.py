#!/usr/bin/env python3
"""Set everything up on a fresh machine with only Python, then run the demo workflow or the tests.

    python3 bootstrap.py demo [snakemake args...]   # venv + deps, then the DAG on the built-in data
    python3 bootstrap.py test [pytest args...]      # venv + deps + MinkowskiEngine (CPU), then the test suite
    python3 bootstrap.py setup                      # venv + deps only

The virtual environment lives in .venv/ and is rebuilt when pyproject.toml or the lock file change. `test` also
builds the MinkowskiEngine CPU wheel with the repo's build step (python -m depthcontrast.minkowski_build; ~4 min
on 2 cores the first time, then taken from its cache in ~/.cache/depthcontrast) and installs it into .venv.
Environment: DEPTHCONTRAST_TORCH overrides the torch requirement (default: the CPU build torch==2.13.0).
"""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".depthcontrast-stamp"
CONSTRAINTS = ROOT / "envs" / "constraints.txt"
DEFAULT_TORCH = "torch==2.13.0"
EXTRAS = ("dev", "voxel")  # pyproject extras installed: tests + tools, the spconv voxel stack (CPU build)
# shared libraries that wheels need but do not bundle: (library name, Debian package)
SYSTEM_LIBRARIES = [("usb-1.0", "libusb-1.0-0")]  # open3d
# what `test` needs beyond the demo: (file or command, Debian package) for the MinkowskiEngine build and the
# container builds (tests/test_containers_build.py builds the CPU images with podman from an mmdebstrap base)
TEST_FILES = [("/usr/include/x86_64-linux-gnu/cblas.h", "libopenblas-dev")]
TEST_COMMANDS = [(tool, tool) for tool in ("podman", "buildah", "mmdebstrap", "skopeo", "umoci", "runc")]


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run(command: list[str], **kwargs) -> None:
    say(" ".join(command))
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def install_stamp() -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", CONSTRAINTS):
        digest.update(path.read_bytes())
    digest.update(os.environ.get("DEPTHCONTRAST_TORCH", DEFAULT_TORCH).encode())
    return digest.hexdigest()


def ensure_system_libraries(for_tests: bool = False) -> None:
    missing = [pkg for lib, pkg in SYSTEM_LIBRARIES if ctypes.util.find_library(lib) is None]
    if for_tests:
        missing += [pkg for path, pkg in TEST_FILES if not Path(path).exists()]
        missing += [pkg for command, pkg in TEST_COMMANDS if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            f"[bootstrap] missing system libraries: install the packages {' '.join(missing)} "
            "(Debian/Ubuntu names) and run again"
        )
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    run([*apt, "update", "-qq"])
    run([*apt, "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_venv() -> None:
    stamp = install_stamp()
    if venv_python().exists() and STAMP.exists() and STAMP.read_text() == stamp:
        return
    if not venv_python().exists():
        say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run([*pip, os.environ.get("DEPTHCONTRAST_TORCH", DEFAULT_TORCH)])
    run([*pip, "-c", str(CONSTRAINTS), "-e", f".[{','.join(EXTRAS)}]"])
    STAMP.write_text(stamp)


def ensure_minkowski() -> None:
    """MinkowskiEngine 0.5.4 (CPU) in .venv, built by the repo's build step or taken from its wheel cache."""
    start = time.monotonic()
    command = [str(venv_python()), "-m", "depthcontrast.minkowski_build", "--cpu", "--install", "--if-missing"]
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        sys.exit("[bootstrap] the MinkowskiEngine build failed (its error is above)")
    say(f"MinkowskiEngine ready in {time.monotonic() - start:.0f} s")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    start = time.monotonic()
    ensure_system_libraries(for_tests=argv[0] == "test")
    ensure_venv()
    set_up = time.monotonic()
    if argv[0] == "test":
        ensure_minkowski()
    ready = time.monotonic()
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    command, extra = argv[0], argv[1:]
    if command == "demo":
        cores = str(os.cpu_count() or 1)
        code = subprocess.run([str(VENV / "bin" / "snakemake"), "--cores", cores, *extra], cwd=ROOT, env=env).returncode
        summary = ROOT / "results" / "summary.md"
        if summary.exists():  # the pretraining and downstream tables (after a failure: what finished)
            print(summary.read_text())
        return code
    if command == "test":
        # the slowest tests with their times: the container builds, the Slurm and workflow runs
        code = subprocess.run([str(venv_python()), "-m", "pytest", "--durations=15", *extra], cwd=ROOT, env=env)
        split = f"set-up {set_up - start:.0f} s, MinkowskiEngine {ready - set_up:.0f} s"
        say(f"time: {split}, tests {time.monotonic() - ready:.0f} s, total {time.monotonic() - start:.0f} s")
        return code.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
