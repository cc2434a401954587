"""Ctrl-C (SIGINT): pretraining checkpoints and exits 130 with one line, its DataLoader workers never block the
exit, and any other verb ends with one line and exit 130 too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.cli import EXIT_INTERRUPTED as CLI_EXIT_INTERRUPTED
from depthcontrast.train import EXIT_INTERRUPTED
from tests.conftest import CLI_ENV, run_cli
from tests.http_server import FileServer
from tests.test_train import (
    assert_resume_finishes_like,
    pretrain_args,
    shards,  # noqa: F401  (the fixture)
    signal_mid_epoch,
    stderr_of,
)

STOPPED_WITHIN_S = 60  # a step takes well under a second; a hang (waiting on a worker) never ends


def wait_or_kill(victim: subprocess.Popen, timeout: float) -> int:
    """The process's exit status; killed (and the test failed) if it has not ended within `timeout`."""
    try:
        return victim.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        victim.kill()
        victim.wait()
        pytest.fail(f"still running {timeout} s after SIGINT")


def wait_for(condition: Callable[[], bool], victim: subprocess.Popen, timeout: float = 60) -> None:
    """Poll until `condition()` while `victim` runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert victim.poll() is None, "the process ended before the condition held"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def press_again_while_stopping(victim: subprocess.Popen, out: Path) -> None:
    """A second Ctrl-C as soon as the first is taken: within the step that the first lets finish."""
    wait_for(lambda: "Ctrl-C again" in stderr_of(out).read_text(), victim)
    os.killpg(victim.pid, signal.SIGINT)


@pytest.mark.slow
def test_sigint_to_the_trainer_alone_checkpoints_exits_130_in_one_line_and_resume_is_bit_exact(
    shards: Path,  # noqa: F811
    tmp_path: Path,
):
    straight = tmp_path / "straight"
    done = run_cli(*pretrain_args(shards, straight, run="tiny_workers"))
    assert done.returncode == 0, done.stderr

    interrupted = tmp_path / "interrupted"
    victim = signal_mid_epoch(shards, interrupted, signal.SIGINT, run="tiny_workers")
    assert wait_or_kill(victim, STOPPED_WITHIN_S) == EXIT_INTERRUPTED
    stderr = stderr_of(interrupted).read_text()
    assert "Traceback" not in stderr
    saved = load_checkpoint(interrupted / "resume" / "last.pth")
    assert saved["epoch"] == 1 and saved["batch"] >= 2
    assert "Ctrl-C again aborts at once" in stderr  # said when the signal arrives
    assert stderr.rstrip().endswith(
        f"interrupted (SIGINT): checkpointed at step {saved['step']}; rerun with --resume to continue"
    )
    assert not (interrupted / "last.pth").exists()
    assert_resume_finishes_like(shards, interrupted, straight, run="tiny_workers")


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_to_the_process_group_leaves_the_workers_quiet_and_a_second_one_aborts_at_once(
    shards: Path,  # noqa: F811
    tmp_path: Path,
    presses: int,
):
    out = tmp_path / "run"
    victim = signal_mid_epoch(shards, out, signal.SIGINT, run="tiny_workers", group=True)
    if presses == 2:
        press_again_while_stopping(victim, out)
    assert wait_or_kill(victim, STOPPED_WITHIN_S) == EXIT_INTERRUPTED
    stderr = stderr_of(out).read_text()
    assert "Traceback" not in stderr  # a worker killed by the Ctrl-C would fail the trainer's next batch
    assert stderr.count("Ctrl-C again") == 1  # the trainer's notice; a forked worker taking the Ctrl-C repeats it
    saved = load_checkpoint(out / "resume" / "last.pth")
    if presses == 1:
        assert saved["batch"] >= 2
        assert "rerun with --resume to continue" in stderr.splitlines()[-1]
    else:  # aborted: the last checkpoint is the end of epoch 0's
        assert (saved["epoch"], saved["batch"]) == (1, 0)
        assert stderr.splitlines()[-1] == "depthcontrast: interrupted"


@pytest.mark.slow
def test_with_debug_an_aborted_run_shows_its_traceback_and_still_ends(shards: Path, tmp_path: Path):  # noqa: F811
    # the traceback keeps the trainer alive until the interpreter exits, when multiprocessing waits for every
    # worker: unless the trainer has ended them itself, it waits forever
    out = tmp_path / "run"
    victim = signal_mid_epoch(shards, out, signal.SIGINT, run="tiny_workers", group=True, flags=("--debug",))
    press_again_while_stopping(victim, out)
    assert wait_or_kill(victim, STOPPED_WITHIN_S) != 0
    stderr = stderr_of(out).read_text()
    assert "Traceback" in stderr
    assert stderr.splitlines()[-1] == "KeyboardInterrupt"


def test_ctrl_c_during_a_download_is_one_line_and_exit_130(tmp_path: Path):
    assert CLI_EXIT_INTERRUPTED == EXIT_INTERRUPTED
    with FileServer() as server:
        url = server.add("/scan.ply", b"ply\n" * 1000, stall_first=1, stall_s=30.0)  # longer than any delay here
        config = tmp_path / "config.yaml"
        source = {"kind": "http", "urls": [{"url": url, "sha256": "0" * 64}]}
        config.write_text(yaml.safe_dump({"datasets": {"scans": {"source": source}}, "pretrain": {}}))
        command = [sys.executable, "-m", "depthcontrast", "download", "--config", str(config), "--dataset", "scans",
                   "--results", str(tmp_path / "results")]  # fmt: skip
        # as from a terminal: a shell starts background jobs (CI's, say) with SIGINT ignored, and Python keeps that
        restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        victim = subprocess.Popen(command, env=CLI_ENV, stderr=subprocess.PIPE, text=True, preexec_fn=restore)
        wait_for(lambda: bool(server.hits_for("/scan.ply")), victim)  # the transfer has started, and stalls
        victim.send_signal(signal.SIGINT)
        _, stderr = victim.communicate(timeout=30)
    assert victim.returncode == CLI_EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "depthcontrast: interrupted"
