"""Rule `finetune`: a thin entry point; the logic lives in depthcontrast.evaluate."""

from pathlib import Path

from depthcontrast.evaluate import run_evaluation
from depthcontrast.stages import run_rule

# the guard keeps process-pool children (spawn) from re-running the rule when they import this file
if __name__ == "__main__":
    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    run_rule(
        sm.log[0],
        run_evaluation,
        sm.wildcards.task,
        sm.params.task,
        sm.params.settings,
        Path(sm.input.index).parent,
        Path(sm.input.checkpoint),
        Path(sm.output.metrics).parent,
    )
