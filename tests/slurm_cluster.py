"""Test helpers around a real single-node Slurm cluster (scripts/local_slurm.py): start it, find jobs, wait."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scripts.local_slurm import (
    LocalCluster,
    LocalSlurmError,
    install_packages,
    missing_commands,
    start_cluster,
    stop_cluster,
)

POLL_S = 0.1


@contextmanager
def running_cluster() -> Iterator[LocalCluster]:
    """A fresh cluster, stopped (and its folder deleted) on exit; point SLURM_CONF at its `conf`.

    Skips only when the cluster cannot exist here: not root, or the apt packages cannot be installed.
    """
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (its daemons run as root)")
    if missing_commands():
        try:
            install_packages()
        except LocalSlurmError as error:
            pytest.skip(f"cannot install Slurm: {error}")
    root = Path(tempfile.mkdtemp(prefix="depthcontrast-slurm-"))  # under /tmp: munged must reach its socket
    try:
        yield start_cluster(root)
    finally:
        stop_cluster(root)


def slurm(*args: str) -> str:
    """Run a Slurm client command; its stdout."""
    return subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=60).stdout


def jobs_by_comment(prefix: str) -> dict[str, str]:
    """Job id -> state of the queued jobs whose comment starts with `prefix` (the Snakemake plugin puts
    `rule_<rule>_wildcards_<values>` there)."""
    listing = slurm("squeue", "--noheader", "--format", "%i %T %k")
    jobs = (line.split(maxsplit=2) for line in listing.splitlines() if line.strip())
    return {job: state for job, state, *comment in jobs if comment and comment[0].startswith(prefix)}


def job_state(job_id: str) -> tuple[str, int]:
    """(JobState, exit status) from slurmctld (kept for MinJobAge after the job ends; no sacct needed)."""
    fields = dict(
        item.split("=", 1) for item in slurm("scontrol", "--oneliner", "show", "job", job_id).split() if "=" in item
    )
    return fields["JobState"], int(fields["ExitCode"].split(":")[0])


def wait_until(ready: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `ready` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)
    return value
