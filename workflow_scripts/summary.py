"""Rule `summary`: a thin entry point; the logic lives in depthcontrast.report."""

from pathlib import Path

from depthcontrast.report import summarize_results
from depthcontrast.stages import run_rule

if __name__ == "__main__":
    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    run_rule(sm.log[0], summarize_results, Path(sm.output.summary).parent, sm.params.runs, sm.params.tasks)
