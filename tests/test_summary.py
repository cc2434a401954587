"""results/summary.md after a failed workflow (the Snakefile's `onerror` hook): it counts a run whose pretraining
finished as finished, and a failure outside every run and evaluation leaves a current summary.md as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from depthcontrast import report
from depthcontrast.report import INCOMPLETE_MTIME_S, summarize_after_failure, summarize_results

TASKS = {"demo": ["seg"]}


def finished_run(results: Path, run: str = "demo") -> None:
    """A run's pretraining outputs: a checkpoint file and two epochs of metrics."""
    folder = results / "pretrain" / run
    folder.mkdir(parents=True)
    (folder / "last.pth").write_bytes(b"checkpoint")
    rows = [f"{epoch},{step},{2.0 - epoch},{10.0 + step}" for epoch, step in ((0, 1), (0, 2), (1, 3), (1, 4))]
    (folder / "metrics.csv").write_text("epoch,global_step,loss,samples_per_s\n" + "\n".join(rows) + "\n")


def evaluation(results: Path, run: str = "demo", task: str = "seg") -> None:
    """A task's metrics.json: pretrained vs scratch mIoU for the linear protocol over two seeds."""
    folder = results / "finetune" / run / task
    folder.mkdir(parents=True)
    stat = {"mean": 0.5, "std": 0.01}
    difference = {"difference": 0.1, "noise": 0.01, "within_noise": False}
    result = {"pretrained": {"miou": stat}, "scratch": {"miou": stat}, "pretrained_minus_scratch": {"miou": difference}}
    metrics = {"task": task, "settings": {"seeds": [0, 1]}, "results": {"linear": result}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_run_whose_evaluation_did_not_run_counts_as_finished(tmp_path: Path, capsys: pytest.CaptureFixture):
    finished_run(tmp_path)  # the failure (an external job, say) came before the run's evaluation started
    summarize_after_failure(tmp_path, ["demo"], TASKS)
    line = capsys.readouterr().err.strip()
    assert line == f"depthcontrast: {tmp_path / 'summary.md'} covers 1 of 1 runs; evaluations missing: demo/seg"
    summary = (tmp_path / "summary.md").read_text()
    assert "**Incomplete**: 1 runs finished; evaluations missing: demo/seg (see *Not finished*)" in summary
    assert "not finished: demo" not in summary
    assert "| demo | 2 | 4 | 2.000 | 1.000 | 13.0 |" in summary
    assert os.stat(tmp_path / "summary.md").st_mtime == INCOMPLETE_MTIME_S  # the `summary` rule rebuilds it


def test_an_unrelated_failure_leaves_a_current_summary_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture):
    finished_run(tmp_path)
    evaluation(tmp_path)
    summarize_results(tmp_path, ["demo"], TASKS)  # what the `summary` rule wrote
    summary = tmp_path / "summary.md"
    before = summary.read_bytes(), summary.stat().st_mtime_ns
    summarize_after_failure(tmp_path, ["demo"], TASKS)
    assert (summary.read_bytes(), summary.stat().st_mtime_ns) == before
    assert capsys.readouterr().err.startswith(f"depthcontrast: {summary} left as it was: the failed job is no ")


def test_a_summary_older_than_a_result_is_rewritten_after_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture):
    finished_run(tmp_path)
    summarize_results(tmp_path, ["demo"], TASKS)  # incomplete: no evaluation yet
    evaluation(tmp_path)
    summarize_after_failure(tmp_path, ["demo"], TASKS)
    assert "covers 1 of 1 runs" in capsys.readouterr().err
    summary = (tmp_path / "summary.md").read_text()
    assert "Incomplete" not in summary and "| demo | seg | linear | 2 | 0.500 ± 0.010 |" in summary


def test_a_failed_run_is_summarized_even_over_a_current_summary(tmp_path: Path, capsys: pytest.CaptureFixture):
    finished_run(tmp_path)
    evaluation(tmp_path)
    summarize_results(tmp_path, ["demo"], TASKS)  # complete and current, before the run `broken` was added
    (tmp_path / "logs" / "pretrain").mkdir(parents=True)
    (tmp_path / "logs" / "pretrain" / "broken.log").write_text("depthcontrast: error: queue size 12 is wrong\n")
    summarize_after_failure(tmp_path, ["demo", "broken"], {**TASKS, "broken": ["seg"]})
    assert capsys.readouterr().err.strip().endswith("covers 1 of 2 runs; not finished: broken (failed)")
    summary = (tmp_path / "summary.md").read_text()
    assert "| broken | failed | depthcontrast: error: queue size 12 is wrong |" in summary


def test_a_task_with_its_own_headline_metric_is_summarised_on_it(tmp_path: Path) -> None:
    """Object classification's metrics.json has no mIoU: its rows use its `headline` (mean class accuracy)."""
    stat = {"mean": 0.3, "std": 0.03}
    result = {
        "pretrained": {"accuracy": stat, "mean_class_accuracy": stat},
        "scratch": {"accuracy": stat, "mean_class_accuracy": {"mean": 0.24, "std": 0.02}},
        "pretrained_minus_scratch": {"mean_class_accuracy": {"difference": 0.06, "noise": 0.03, "within_noise": False}},
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"task": "kicad_cls", "headline": "mean_class_accuracy", "settings": {"seeds": [0, 1]},
                                "results": {"linear_global": result}}))  # fmt: skip
    (row,) = report.downstream_rows("demo", path)
    assert row["metric"] == "mean_class_accuracy" and row["difference"] == 0.06 and row["scratch"]["mean"] == 0.24
    report.plot_downstream([row], tmp_path / "downstream.png")
    assert (tmp_path / "downstream.png").stat().st_size > 0


def test_the_summary_gives_samples_seen_and_the_time_of_pretraining_and_of_each_protocol(tmp_path: Path):
    folder = tmp_path / "pretrain" / "demo"
    folder.mkdir(parents=True)
    (folder / "last.pth").write_bytes(b"checkpoint")
    header = "epoch,global_step,loss,samples_per_s,samples,run_s\n"
    (folder / "metrics.csv").write_text(header + "0,1,2.0,10.0,32,3.5\n1,2,1.0,12.0,64,754.2\n")
    evaluation(tmp_path)
    metrics = tmp_path / "finetune" / "demo" / "seg" / "metrics.json"
    data = json.loads(metrics.read_text())
    data["results"]["linear"]["seconds"] = 42.4
    metrics.write_text(json.dumps(data))
    summarize_results(tmp_path, ["demo"], TASKS)
    summary = (tmp_path / "summary.md").read_text()
    assert "| demo | 2 | 2 | 2.000 | 1.000 | 12.0 | 64 | 12.6 min |" in summary
    assert "| +0.100 | pretraining helps | 42 s |" in summary
