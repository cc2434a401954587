"""Logging: one format; --debug turns on the package's own debug lines, not those of the libraries it uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import CLI_ENV, run_cli
from tests.test_shards import make_samples, write

THIRD_PARTY_DEBUG = re.compile(r" DEBUG (h5py|hdf5plugin|matplotlib|PIL|urllib3|fsspec|asyncio)\b")


def test_debug_inspect_shows_no_debug_lines_of_h5py_or_hdf5plugin(tmp_path: Path):
    write(tmp_path / "shards", make_samples(3))  # lz4: inspect loads h5py and hdf5plugin
    result = run_cli("--debug", "inspect", str(tmp_path / "shards"), "--quick")
    assert result.returncode == 0, result.stderr
    assert "3 samples in 2 shards" in result.stdout
    assert not THIRD_PARTY_DEBUG.search(result.stderr), result.stderr


def test_debug_lets_the_packages_debug_lines_through_and_keeps_other_loggers_at_info(tmp_path: Path):
    script = (
        "import logging, sys; from depthcontrast.log import setup_logging; setup_logging(debug=sys.argv[1] == 'on')\n"
        "for name in ('depthcontrast.data.shards', 'h5py._conv', 'urllib3.connectionpool'):\n"
        "    logging.getLogger(name).debug('debug of %s', name); logging.getLogger(name).info('info of %s', name)\n"
    )

    def logged(debug: str) -> str:
        run = subprocess.run([sys.executable, "-c", script, debug], capture_output=True, text=True, env=CLI_ENV)
        assert run.returncode == 0, run.stderr
        return run.stderr

    on, off = logged("on"), logged("off")
    assert " DEBUG depthcontrast.data.shards: debug of depthcontrast.data.shards" in on
    assert "debug of h5py" not in on and "debug of urllib3" not in on
    assert all(f"INFO {name}: info of {name}" in on for name in ("h5py._conv", "urllib3.connectionpool"))
    assert "debug of" not in off and off.count(" INFO ") == 3
