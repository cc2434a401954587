"""Shared fixtures: a temporary copy of the repository and a Snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# one OpenMP thread from the start, before torch loads: spconv's CPU kernels are exact only so (the CLI restarts
# voxel runs this way, depthcontrast/cli.py), and the tests compare its results with MinkowskiEngine's in-process
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


BIN = Path(sys.executable).parent


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone (plus local edits) holds."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if (REPO / line).is_file()]


def copy_repo(dest: Path) -> Path:
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A fresh copy of the repository (no results/) in a temporary folder."""
    return copy_repo(tmp_path / "repo")


def run_snakemake(cwd: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the environment's snakemake in `cwd`; on failure show its output."""
    result = subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


# The CLI's environment in tests: one CPU thread. The tests' tiny models gain nothing from more; on a busy
# machine OpenMP threads spin-waiting for a core made a 6 s voxel run take 140 s; and a CPU run is bit-exact
# against another only at the same thread count.
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m depthcontrast ...` as a user would (with CLI_ENV)."""
    return subprocess.run(
        [sys.executable, "-m", "depthcontrast", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CLI_ENV,
    )
