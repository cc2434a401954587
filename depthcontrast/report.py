"""The run summary: loss curves, throughput and the downstream table, as PNG plots and Markdown.

`results/summary.md` reads well in a terminal; the plots also go into `snakemake --report`. When some runs
did not finish (a sweep with a failed run), the summary covers the finished ones and lists the others.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from depthcontrast.io_utils import atomic_path, atomic_write_bytes
from depthcontrast.run_status import FINISHED, NOT_RUN, RunStatus, run_status

METRIC = "miou"
PLOT_DPI = 110
# an incomplete summary's date: older than every result, so the `summary` rule rebuilds it; not 0, which Snakemake
# takes for "no date" and never compares with its inputs'
INCOMPLETE_MTIME_S = 1


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_training(run: str, metrics_csv: Path, out_png: Path) -> dict[str, float]:
    """Loss (and its terms) and samples/s per logged step; returns first/last epoch mean loss."""
    rows = _read_metrics(metrics_csv)
    steps = [int(r["global_step"]) for r in rows]
    fig, (loss_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(steps, [float(r["loss"]) for r in rows], label="total loss", lw=1.2)
    loss_ax.set(xlabel="step", ylabel="InfoNCE loss", title=f"{run}: loss")
    speed_ax.plot(steps, [float(r["samples_per_s"]) for r in rows], lw=1.0, color="tab:green")
    speed_ax.set(xlabel="step", ylabel="samples / s", title=f"{run}: throughput")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    plt.close(fig)
    by_epoch: dict[int, list[float]] = {}
    for r in rows:
        by_epoch.setdefault(int(r["epoch"]), []).append(float(r["loss"]))
    means = {epoch: sum(v) / len(v) for epoch, v in sorted(by_epoch.items())}
    epochs = list(means)
    return {
        "epochs": len(epochs),
        "first_epoch_loss": means[epochs[0]],
        "last_epoch_loss": means[epochs[-1]],
        "steps": steps[-1] if steps else 0,
        "median_samples_per_s": sorted(float(r["samples_per_s"]) for r in rows)[len(rows) // 2],
        # metrics.csv of older versions has neither column
        "samples": int(rows[-1]["samples"]) if rows and rows[-1].get("samples") else None,
        "seconds": float(rows[-1]["run_s"]) if rows and rows[-1].get("run_s") else None,
    }


def downstream_rows(run: str, metrics_json: Path) -> list[dict[str, Any]]:
    """One row per protocol of a task's metrics.json: pretrained vs scratch on its headline metric (mIoU for the
    segmentation tasks, the `headline` a task names otherwise) with spread."""
    data = json.loads(metrics_json.read_text())
    metric = data.get("headline", METRIC)
    rows = []
    for protocol, result in data["results"].items():
        pre, scr = result["pretrained"][metric], result["scratch"][metric]
        diff = result["pretrained_minus_scratch"][metric]
        rows.append({
            "run": run, "task": data["task"], "protocol": protocol, "seeds": len(data["settings"]["seeds"]),
            "metric": metric, "pretrained": pre, "scratch": scr, "difference": diff["difference"],
            "within_noise": diff["within_noise"], "seconds": result.get("seconds"),
        })  # fmt: skip
    return rows


def plot_downstream(rows: Sequence[dict[str, Any]], out_png: Path) -> None:
    """Grouped bars: pretrained vs scratch (mean ± std of each task's metric) per run/task/protocol."""
    labels = [f"{r['run']}\n{r['task']}\n{r['protocol']} ({r['metric']})" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.8))
    width = 0.38
    for offset, init, colour in ((-width / 2, "pretrained", "tab:blue"), (width / 2, "scratch", "tab:gray")):
        ax.bar([x + offset for x in xs], [r[init]["mean"] for r in rows], width, yerr=[r[init]["std"] for r in rows],
               capsize=3, label=init, color=colour)  # fmt: skip
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set(ylabel="test score (mIoU or the task's metric)", title="Downstream: pretrained vs scratch (mean ± std)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    plt.close(fig)


def _task_label(row: dict[str, Any]) -> str:
    return row["task"] if row["metric"] == METRIC else f"{row['task']} ({row['metric'].replace('_', ' ')})"


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _duration(seconds: float | None) -> str:
    """`42 s`, `12.5 min`, `2.1 h`; `—` when not recorded."""
    if seconds is None:
        return "—"
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def _unfinished_lines(unfinished: Sequence[RunStatus]) -> list[str]:
    lines = ["", "## Not finished", "", "| run | state | detail |", "|---|---|---|"]
    for status in unfinished:
        if status.state != FINISHED:
            lines.append(f"| {status.run} | {status.state} | {status.detail.replace('|', '/')} |")
        lines += [f"| {status.run} / {task} | evaluation missing | {why.replace('|', '/')} |"
                  for task, why in status.missing_tasks]  # fmt: skip
    return lines


def _what_is_missing(unfinished: Sequence[RunStatus]) -> str:
    """`not finished: a (failed); evaluations missing: c/seg`: the runs that did not finish (a finished run is
    never among them), then the missing evaluations of the finished ones."""
    runs = [f"{status.run} ({status.state})" for status in unfinished if status.state != FINISHED]
    tasks = [f"{status.run}/{task}" for status in unfinished for task, _ in status.missing_tasks]
    parts = [f"not finished: {', '.join(runs)}"] if runs else []
    return "; ".join(parts + ([f"evaluations missing: {', '.join(tasks)}"] if tasks else []))


def write_summary(
    runs: dict[str, Path], downstream: dict[str, list[Path]], out_md: Path, plot_dir: Path,
    unfinished: Sequence[RunStatus] = (),
) -> dict[str, Any]:  # fmt: skip
    """runs: name → results/pretrain/<run>; downstream: run → its metrics.json files; unfinished: runs or
    evaluations that did not finish, listed at the end. Writes plots + Markdown."""
    lines = ["# depthcontrast-pipeline summary", ""]
    if unfinished:
        lines += [f"**Incomplete**: {len(runs)} runs finished; {_what_is_missing(unfinished)} (see *Not finished*). "
                  "The next `snakemake` run rebuilds this file.", ""]  # fmt: skip
    lines += ["## Pretraining", "",
              "| run | epochs | steps | loss, first epoch | loss, last epoch | median samples/s | samples seen "
              "| time |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    training = {}
    for run, folder in sorted(runs.items()):
        stats = plot_training(run, folder / "metrics.csv", plot_dir / f"training_{run}.png")
        training[run] = stats
        lines.append(
            f"| {run} | {stats['epochs']} | {stats['steps']} | {stats['first_epoch_loss']:.3f} | "
            f"{stats['last_epoch_loss']:.3f} | {stats['median_samples_per_s']:.1f} | "
            f"{'—' if stats['samples'] is None else format(stats['samples'], ',')} | {_duration(stats['seconds'])} |"
        )
    rows = [
        row for run, files in sorted(downstream.items()) for path in sorted(files) for row in downstream_rows(run, path)
    ]
    lines += ["", "## Downstream (test mIoU unless the task names its metric, mean ± std over seeds)", "",
              "| run | task | protocol | seeds | pretrained | scratch | pretrained − scratch | verdict | time |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        verdict = "within noise" if r["within_noise"] else ("pretraining helps" if r["difference"] > 0 else "worse")
        lines.append(
            f"| {r['run']} | {_task_label(r)} | {r['protocol']} | {r['seeds']} | {_pm(r['pretrained'])} | "
            f"{_pm(r['scratch'])} | {r['difference']:+.3f} | {verdict} | {_duration(r['seconds'])} |"
        )
    if rows:
        plot_downstream(rows, plot_dir / "downstream.png")
    else:
        lines.append("| (no evaluation results) | | | | | | | | |")
    if unfinished:
        lines += _unfinished_lines(unfinished)
    lines += ["", f"Plots: {plot_dir}/ (also in `snakemake --report report.html`)", ""]
    atomic_write_bytes(out_md, "\n".join(lines).encode())
    return {"training": training, "downstream": rows}


def _metrics_json(results: Path, run: str, task: str) -> Path:
    return results / "finetune" / run / task / "metrics.json"


def summarize_results(results: Path, runs: Sequence[str], tasks: Mapping[str, Sequence[str]]) -> list[RunStatus]:
    """Write <results>/summary.md and <results>/report/ for the finished runs, listing the others; every run's status.

    An incomplete summary is dated 1970, so Snakemake's `summary` rule still rebuilds it once all runs finished.
    """
    statuses = [run_status(results, run, tasks.get(run, ())) for run in runs]
    finished = {s.run: results / "pretrain" / s.run for s in statuses if s.state == FINISHED}
    downstream = {
        run: [path for task in tasks.get(run, ()) if (path := _metrics_json(results, run, task)).exists()]
        for run in finished
    }
    unfinished = [status for status in statuses if not status.complete]
    summary = results / "summary.md"
    write_summary(finished, downstream, summary, results / "report", unfinished)
    if unfinished:
        os.utime(summary, (INCOMPLETE_MTIME_S, INCOMPLETE_MTIME_S))
    return statuses


def summarize_after_failure(results: Path, runs: Sequence[str], tasks: Mapping[str, Sequence[str]]) -> None:
    """The workflow's `onerror` hook: the summary of what finished, unless no run got as far as pretraining, or
    the failed job was none of the runs or their evaluations and summary.md is newer than every result.

    That summary.md (the `summary` rule's) is kept: rewriting it could only add "not run" lines for the jobs
    the failure kept from starting, and date it 1970; the next `snakemake` run rebuilds it when it must.
    """
    statuses = [run_status(results, run, tasks.get(run, ())) for run in runs]
    if all(status.state == NOT_RUN for status in statuses):
        return
    summary = results / "summary.md"
    unfinished = [status for status in statuses if not status.complete]
    missing = f"; {_what_is_missing(unfinished)}" if unfinished else ""
    if not any(status.went_wrong for status in statuses) and _is_current(summary, results, runs, tasks):
        print(f"depthcontrast: {summary} left as it was: the failed job is no pretraining run or evaluation, "
              f"and no result is newer than it{missing}", file=sys.stderr)  # fmt: skip
        return
    summarize_results(results, runs, tasks)
    finished = sum(status.state == FINISHED for status in statuses)
    print(f"depthcontrast: {summary} covers {finished} of {len(statuses)} runs{missing}", file=sys.stderr)


def _is_current(summary: Path, results: Path, runs: Sequence[str], tasks: Mapping[str, Sequence[str]]) -> bool:
    """Whether `summary` exists and is newer than every result it can show: the runs' checkpoints and metrics and
    their evaluations' metrics.json (an incomplete summary is dated 1970: never current)."""
    if not summary.exists():
        return False
    results_shown = [
        path
        for run in runs
        for path in (results / "pretrain" / run / "last.pth", results / "pretrain" / run / "metrics.csv",
                     *(_metrics_json(results, run, task) for task in tasks.get(run, ())))
        if path.exists()
    ]  # fmt: skip
    return all(path.stat().st_mtime <= summary.stat().st_mtime for path in results_shown)
