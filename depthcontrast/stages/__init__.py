"""Stage entry points shared by the CLI and the Snakemake rules."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from depthcontrast.errors import DepthContrastError
from depthcontrast.log import setup_logging


def run_rule(log_file: str, stage: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a stage from a Snakemake rule with logs and progress bars in the rule's log file.

    A user error (DepthContrastError) ends as one line in the log and exit status 1, no traceback.
    """
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", buffering=1) as log_stream:
        sys.stderr = log_stream
        setup_logging(None)
        try:
            return stage(*args, **kwargs)
        except DepthContrastError as exc:
            logging.getLogger("depthcontrast").error("%s", exc)
            sys.exit(1)
        finally:
            sys.stderr = sys.__stderr__
