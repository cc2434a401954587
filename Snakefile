# depthcontrast-pipeline: raw scans -> HDF5 shards -> pretraining -> export -> evaluation.
# This file is a table of contents; the rules are in rules/, the logic in the depthcontrast package.
import sys
from pathlib import Path

from depthcontrast.config import validate_workflow_config
from depthcontrast.errors import ConfigError


configfile: "config.yaml"


report: "report/workflow.rst"


try:  # an error names the config file (or the --config overrides) that sets the key
    config.update(validate_workflow_config(config, workflow))
except ConfigError as error:
    sys.exit(f"depthcontrast: error: {error}")


include: "rules/common.smk"
include: "rules/settings.smk"
include: "rules/download.smk"
include: "rules/preprocess.smk"
include: "rules/pretrain.smk"
include: "rules/export.smk"
include: "rules/finetune.smk"
include: "rules/report.smk"
include: "rules/external.smk"


rule all:
    input:
        shard_indexes(),
        pretrain_outputs(),
        export_outputs(),
        finetune_outputs(),
        summary_outputs(),
        external_outputs(),
    default_target: True


# With failed jobs (--keep-going runs the rest), results/summary.md still covers what finished.
onerror:
    from depthcontrast.report import summarize_after_failure  # here: matplotlib only when it is needed

    summarize_after_failure(Path("results"), enabled_runs(), evaluated_tasks(config))
