"""Rule `settings`: a thin entry point; the logic lives in depthcontrast.stages.settings."""

from depthcontrast.log import setup_logging
from depthcontrast.stages.settings import write_settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
setup_logging(sm.log[0])
write_settings(sm.params.settings, sm.output.settings, sm.wildcards.stage, sm.wildcards.item)
