"""External finetuning: a templated command of a real downstream code base, run on exported weights.

The command is the user's (VoteNet, OpenPCDet, SpatioTemporalSegmentation ... from their checkout or
inside `apptainer exec IMAGE ...`); placeholders `{weights}`, `{out}` and `{run}` are filled in.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from depthcontrast.errors import ConfigError, DataError
from depthcontrast.io_utils import atomic_write_json, sha256_file
from depthcontrast.paths import expand_env

log = logging.getLogger(__name__)
PLACEHOLDERS = ("weights", "out", "run")


def render_command(template: str, weights: Path, out_dir: Path, run: str) -> str:
    """The command with placeholders filled (shell-quoted) and ${VAR} taken from the environment."""
    values = {"weights": shlex.quote(str(weights)), "out": shlex.quote(str(out_dir)), "run": shlex.quote(run)}
    try:
        return expand_env(template, what="external command").format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        raise ConfigError(f"external command {template!r}: bad placeholder {exc} (allowed: {allowed})") from None


def run_external(name: str, job: dict[str, Any], weights: Path, out_dir: Path) -> dict[str, Any]:
    """Run one external finetune job in its workdir; its output goes to the log; writes out_dir/done.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = render_command(job["command"], weights.resolve(), out_dir.resolve(), job["run"])
    workdir = Path(expand_env(job["workdir"], what=f"external.{name}.workdir")).expanduser()
    if not workdir.is_dir():
        raise DataError(f"{workdir}: external.{name}.workdir does not exist (your checkout of the downstream code)")
    log.info("external %s in %s: %s", name, workdir, command)
    started = time.monotonic()
    completed = subprocess.run(command, shell=True, cwd=workdir, check=False)
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise DataError(f"external.{name}: command exited with status {completed.returncode} after {elapsed:.0f} s")
    record = {
        "name": name,
        "run": job["run"],
        "target": job["target"],
        "weights": str(weights),
        "weights_sha256": sha256_file(weights),
        "command": command,
        "workdir": str(workdir),
        "seconds": round(elapsed, 1),
        "exit_status": 0,
    }
    atomic_write_json(out_dir / "done.json", record)
    return record
