"""Stage entry points shared by the CLI and the Snakemake rules."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from depthcontrast.errors import DepthContrastError
from depthcontrast.log import setup_logging


def run_rule(log_file: str, stage: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a stage from a Snakemake rule: log to the rule's log; a user error ends as one line, exit 1."""
    setup_logging(log_file)
    try:
        return stage(*args, **kwargs)
    except DepthContrastError as exc:
        logging.getLogger("depthcontrast").error("%s", exc)
        print(f"depthcontrast: error: {exc}", file=sys.stderr)
        sys.exit(1)
