"""Where each pretraining run stands, read from results/ alone: finished, stopped (resumable), failed, or not run.

The summary (and `depthcontrast summarize`) use it to report a sweep in which some runs failed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FINISHED, STOPPED, FAILED, NOT_RUN = "finished", "stopped", "failed", "not run"
_CLI_ERROR = re.compile(r"depthcontrast: error: ")
_ANY_ERROR = re.compile(r"\b(ERROR|[A-Za-z]*Error|error)\b")
MAX_DETAIL = 300


@dataclass(frozen=True)
class RunStatus:
    """A run's state, why it is not finished, and (finished runs) the evaluation tasks still missing."""

    run: str
    state: str
    detail: str = ""
    missing_tasks: tuple[tuple[str, str], ...] = ()  # (task, why)

    @property
    def complete(self) -> bool:
        return self.state == FINISHED and not self.missing_tasks

    @property
    def went_wrong(self) -> bool:
        """The run failed or stopped, or one of its evaluations has a log but no metrics (not merely not run)."""
        return self.state in (FAILED, STOPPED) or any(why != NOT_RUN for _, why in self.missing_tasks)

    def line(self) -> str:
        """`run<TAB>state<TAB>why`: how `depthcontrast summarize` lists it."""
        missing = ", ".join(f"{task}: {why}" for task, why in self.missing_tasks)
        return f"{self.run}\t{self.state}\t{self.detail or (f'evaluation missing: {missing}' if missing else '')}"


def last_error(log: Path) -> str | None:
    """The log's last `depthcontrast: error:` line, else its last line naming an error, else None."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for pattern in (_CLI_ERROR, _ANY_ERROR):
        for line in reversed(lines):
            if pattern.search(line):
                return line[:MAX_DETAIL]
    return None


def _last_logged_step(metrics_csv: Path) -> str:
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return f"epoch {rows[-1]['epoch']}, step {rows[-1]['global_step']}" if rows else "step 0"


def _task_status(results: Path, run: str, task: str) -> str | None:
    """Why the run's evaluation on `task` is missing; None when its metrics.json exists."""
    if (results / "finetune" / run / task / "metrics.json").exists():
        return None
    log = results / "logs" / "finetune" / run / f"{task}.log"
    if not log.exists():
        return NOT_RUN
    return last_error(log) or f"no metrics.json (see {log})"


def run_status(results: Path, run: str, tasks: Sequence[str] = ()) -> RunStatus:
    """The run's state from results/pretrain/<run>/, its resume/ folder and results/logs/pretrain/<run>.log."""
    folder = results / "pretrain" / run
    if (folder / "last.pth").exists() and (folder / "metrics.csv").exists():
        missing = tuple((task, why) for task in tasks if (why := _task_status(results, run, task)) is not None)
        return RunStatus(run, FINISHED, missing_tasks=missing)
    log = results / "logs" / "pretrain" / f"{run}.log"
    resume = folder / "resume"
    error = last_error(log) if log.exists() else None
    resumable = (resume / "last.pth").exists() and (resume / "metrics.csv").exists()
    where = f"last logged {_last_logged_step(resume / 'metrics.csv')}" if resumable else ""
    if error:
        return RunStatus(run, FAILED, error + (f" ({where}; resumable)" if where else ""))
    if resumable:
        return RunStatus(run, STOPPED, f"stopped or still running, {where}: the next run resumes from {resume}")
    if log.exists():
        return RunStatus(run, STOPPED, f"no checkpoint yet and no error in {log}: still running, or killed")
    return RunStatus(run, NOT_RUN, "no log: an upstream job failed or the workflow stopped before it")
