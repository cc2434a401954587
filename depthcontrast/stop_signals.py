"""Stopping a pretraining run between steps: the signals that stop it, the flag they set, the exit codes.

SIGTERM/SIGUSR1 (Slurm pre-emption or its time limit) and SIGINT (Ctrl-C) set the flag; the trainer checks it
between steps on every rank, checkpoints, and exits EXIT_REQUEUE (requeue and resume) or EXIT_INTERRUPTED.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch
import torch.distributed as dist

from depthcontrast.launch import WorldInfo

log = logging.getLogger(__name__)
EXIT_REQUEUE = 75  # sysexits EX_TEMPFAIL: stopped by a signal after checkpointing; rerun with --resume
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C: checkpointed; rerun with --resume
REQUEUE_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_SIGNALS = (signal.SIGINT, *REQUEUE_SIGNALS)


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM/SIGUSR1 to the trainer: Slurm signals every process of a job step,
    a terminal's Ctrl-C every process of its group. (So the trainer has to end them: see Trainer._stop_workers.)"""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm pre-emption or time limit) or SIGINT (Ctrl-C); checked between steps on
    every rank. A second SIGINT while stopping aborts at once: KeyboardInterrupt, no checkpoint."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._group: dist.ProcessGroup | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        if signum == signal.SIGINT:
            log.warning("interrupted (SIGINT): checkpointing after this step; Ctrl-C again aborts at once, "
                        "without a checkpoint")  # fmt: skip

    def agreed(self, world: WorldInfo) -> int:
        """The exit code every rank stops with, as soon as any rank was signalled (0: go on): EXIT_REQUEUE if
        any rank got SIGTERM/SIGUSR1, else EXIT_INTERRUPTED.

        The ranks agree through a CPU (gloo) group, so asking never waits for the GPU: the step's kernels run on
        while the next batch is fetched. With one process nothing is exchanged."""
        codes = (0, EXIT_INTERRUPTED, EXIT_REQUEUE)
        mine = 0 if self.signal is None else 1 if self.signal == signal.SIGINT else 2
        if not world.distributed:
            return codes[mine]
        raised = torch.tensor([mine])
        dist.all_reduce(raised, op=dist.ReduceOp.MAX, group=self._cpu_group())
        return codes[int(raised.item())]

    def _cpu_group(self) -> dist.ProcessGroup | None:
        """A gloo group of every rank (made on the first call, which every rank makes at the same step); None
        (the default group) when that is gloo already."""
        if dist.get_backend() == dist.Backend.GLOO:
            return None
        if self._group is None:
            self._group = dist.new_group(backend=dist.Backend.GLOO)
        return self._group

    def ignore(self) -> None:
        """From now on every stop signal is ignored (while the trainer ends its DataLoader workers)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
