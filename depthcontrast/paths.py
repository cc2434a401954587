"""Path and URL helpers: environment expansion with clear errors."""

from __future__ import annotations

import os
import re

from depthcontrast.errors import ConfigError

ENV_VAR_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${VAR}


def expand_env(text: str, what: str) -> str:
    """Replace each ${VAR} in `text` from the environment; an unset variable is a ConfigError."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{what}: environment variable {name} is not set (used as ${{{name}}})")
        return os.environ[name]

    return ENV_VAR_PATTERN.sub(lookup, text)
