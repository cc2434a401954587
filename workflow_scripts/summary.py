"""Rule `summary`: a thin entry point; the logic lives in depthcontrast.report."""

from pathlib import Path

from depthcontrast.report import write_summary
from depthcontrast.stages import run_rule

if __name__ == "__main__":
    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    runs = {run: Path(path).parent for run, path in zip(sm.params.runs, sm.input.checkpoints, strict=True)}
    downstream = {run: [Path(p) for p in sm.input.metrics if f"/finetune/{run}/" in p] for run in sm.params.runs}
    run_rule(sm.log[0], write_summary, runs, downstream, Path(sm.output.summary), Path(sm.output.downstream).parent)
