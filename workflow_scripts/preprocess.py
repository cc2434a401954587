"""Rule `preprocess`: a thin entry point; the logic lives in depthcontrast.stages.preprocess."""

from pathlib import Path

from depthcontrast.stages import run_rule
from depthcontrast.stages.preprocess import run_preprocess

# the guard keeps process-pool children (spawn) from re-running the rule when they import this file
if __name__ == "__main__":
    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    settings = {"format": sm.params.format, "preprocess": sm.params.preprocess}
    run_rule(
        sm.log[0],
        run_preprocess,
        sm.wildcards.dataset,
        settings,
        Path(sm.input.manifest),
        Path(sm.output.index).parent,
        workers=sm.threads,
    )
