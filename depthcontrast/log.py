"""Logging with one format, and progress bars that stay readable in Snakemake log files."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PACKAGE_LOGGER = "depthcontrast"  # the parent of every module's logging.getLogger(__name__)


def setup_logging(log_file: str | Path | None = None, debug: bool = False) -> None:
    """Log to stderr, or to `log_file` (appending) when a workflow rule gives one. `debug` turns on DEBUG for the
    package's own loggers only: h5py, hdf5plugin, matplotlib, PIL, urllib3, ... stay at INFO."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.DEBUG if debug else logging.NOTSET)


class _LineStream:
    """A stream for tqdm off a TTY: each refresh becomes its own line instead of a `\\r` overwrite."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_stream() -> TextIO | _LineStream:
    """Where progress bars write: stderr itself on a terminal, else a line-per-refresh wrapper."""
    return sys.stderr if sys.stderr.isatty() else _LineStream(sys.stderr)


def progress_bar(**tqdm_args: Any) -> tqdm:
    """A tqdm bar with the project's settings: live on a terminal, a plain line every ~10 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(
        file=progress_stream(),
        dynamic_ncols=interactive,
        mininterval=0.1 if interactive else 10.0,
        ascii=not interactive,
        **tqdm_args,
    )


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate `items` behind a progress_bar."""
    yield from progress_bar(iterable=items, desc=desc, total=total, unit=unit)
