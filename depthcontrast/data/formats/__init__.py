"""Dataset formats: turn a manifest's raw files into work units, and a unit into samples.

A *unit* is the smallest piece of work decoded by one worker: one file (PLY, LAS tile, KITTI sweep),
one depth frame, or one sequence file (ScanNet .sens, Redwood zip, Waymo segment) that yields many
samples. Units are planned in a deterministic order; their samples keep that order in the shards.

- `plan_dataset(manifest, fmt, dataset)`: the units of a dataset and the files it skips (plan.py)
- `decode_unit(unit, fmt)`: a unit's samples and quarantine entries; picklable, never raises for
  bad data (decode.py)
- `official_layout_files(kind, root)`: the raw files of an official ScanNet / Redwood / KITTI /
  Waymo layout (layouts.py)
"""

from depthcontrast.data.formats.base import Unit
from depthcontrast.data.formats.decode import decode_unit
from depthcontrast.data.formats.layouts import official_layout_files
from depthcontrast.data.formats.plan import Plan, plan_dataset, plan_units

__all__ = ["Plan", "Unit", "decode_unit", "official_layout_files", "plan_dataset", "plan_units"]
