"""Rule `external_finetune`: a thin entry point; the logic lives in depthcontrast.external."""

from pathlib import Path

from depthcontrast.external import run_external
from depthcontrast.stages import run_rule

if __name__ == "__main__":
    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    run_rule(sm.log[0], run_external, sm.wildcards.name, sm.params.job, Path(sm.input.weights),
             Path(sm.output.done).parent)  # fmt: skip
