"""Rule `download`: a thin entry point; the logic lives in depthcontrast.stages.download."""

from pathlib import Path

from depthcontrast.stages import run_rule
from depthcontrast.stages.download import run_download

# the guard keeps process-pool children (spawn) from re-running the rule when they import this file
if __name__ == "__main__":
    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    run_rule(sm.log[0], run_download, sm.wildcards.dataset, sm.params.source, Path(sm.output.manifest).parent)
