"""metrics.csv of a pretraining run: one row per logged step, written by rank 0."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depthcontrast.io_utils import atomic_path

METRIC_FIELDS = (
    "epoch", "step", "global_step", "lr", "loss", "npid", "npid_other", "cmc_p2i", "cmc_i2p",
    "samples_per_s", "data_s", "compute_s", "gpu_mem_gib", "samples", "run_s",
)  # fmt: skip
# samples: samples trained on so far (steps x global batch); run_s: wall seconds of training so far, summed over
# the attempts a resumed run took (up to its checkpoints)


class MetricsLog:
    """metrics.csv rows appended by rank 0; a resumed run first drops rows past its checkpoint."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, global_step: int) -> None:
        """Keep the rows of steps up to and including `global_step` (the checkpoint's completed steps)."""
        if not (self.enabled and self.path.exists()):
            return
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["global_step"]) <= global_step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({key: row.get(key, "") for key in METRIC_FIELDS})
