"""Sweeps: a grid of pretraining runs written once (`sweeps:` in config.yaml), expanded into `pretrain:` runs.

    sweeps:
      widths:
        base: {datasets: [demo_indoor], epochs: 100}
        grid:
          backbone.scale: [1, 2]                                  # label: scale1, scale2
          seed: [0, 1, 2]                                         # label: seed0, seed1, seed2
          datasets: {indoor: [demo_indoor], both: [demo_indoor, demo_lidar]}   # label: the key

gives the 12 runs widths-scale1-seed0-indoor ... widths-scale2-seed2-both, each `base` with that grid point's
values set (a dotted key sets a nested setting). Every run is then validated like a hand-written one.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from depthcontrast.errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _labelled(key: str, values: list[Any] | dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) pairs: a mapping's own keys, else `<last key part><value>` (strings: the value alone)."""
    if isinstance(values, dict):
        return list(values.items())
    leaf = key.rsplit(".", 1)[-1]
    return [(_UNSAFE.sub("_", value if isinstance(value, str) else f"{leaf}{value}"), value) for value in values]


def _set_dotted(run: dict[str, Any], key: str, value: Any, where: str) -> None:
    *parents, leaf = key.split(".")
    node = run
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: grid key {key!r}: {part!r} is not a mapping in `base`")
    node[leaf] = copy.deepcopy(value)


def sweep_runs(name: str, sweep: Mapping[str, Any], source: str = "config") -> Iterator[tuple[str, dict[str, Any]]]:
    """(run name, run settings) for every point of the sweep's grid, in the grid's key order."""
    axes = [_labelled(key, values) for key, values in sweep["grid"].items()]
    for point in itertools.product(*axes):
        run = copy.deepcopy(dict(sweep["base"]))
        for key, (_label, value) in zip(sweep["grid"], point, strict=True):
            _set_dotted(run, key, value, f"{source}: sweeps.{name}")
        yield "-".join([name, *(label for label, _value in point)]), run


def expand_sweeps(config: dict[str, Any], source: str = "config") -> None:
    """Add every sweep's runs to config["pretrain"]; a name given twice is a ConfigError."""
    for name, sweep in config.get("sweeps", {}).items():
        for run_name, run in sweep_runs(name, sweep, source):
            if run_name in config["pretrain"]:
                raise ConfigError(
                    f"{source}: sweeps.{name}: run {run_name!r} is defined twice (by `pretrain:` or by another "
                    "grid point with the same labels): rename the sweep or label the values with a mapping"
                )
            config["pretrain"][run_name] = run
