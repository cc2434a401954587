"""Decoding: one unit → its samples, with bad files and frames turned into quarantine entries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from depthcontrast.data.formats.base import Unit
from depthcontrast.data.formats.depth_png import decode_depth_png
from depthcontrast.data.formats.redwood import decode_redwood
from depthcontrast.data.formats.scannet import decode_sens
from depthcontrast.data.formats.waymo import decode_waymo
from depthcontrast.data.readers import FILE_READERS
from depthcontrast.data.records import QuarantineEntry, Sample
from depthcontrast.errors import SampleError

Decoded = list[Sample | QuarantineEntry]

SEQUENCE_DECODERS: dict[str, Callable[[Unit, dict], Sequence[Sample | QuarantineEntry]]] = {
    "scannet_sens": decode_sens,
    "redwood": decode_redwood,
    "waymo": decode_waymo,
    "depth_png": decode_depth_png,
}


def crop_to_range(sample: Sample, point_range: Sequence[float]) -> Sample:
    """Keep points inside [xmin, ymin, zmin, xmax, ymax, zmax] (bounds inclusive).

    Non-finite points are kept so that the preprocess stage still sees and quarantines them.
    """
    low, high = np.asarray(point_range[:3], np.float32), np.asarray(point_range[3:], np.float32)
    points = sample.points
    inside = ((points >= low) & (points <= high)).all(axis=1)
    keep = inside | ~np.isfinite(points).all(axis=1)
    return Sample(
        sample.sample_id,
        points[keep],
        {name: values[keep] for name, values in sample.features.items()},
        None if sample.labels is None else sample.labels[keep],
    )


def _decode(unit: Unit, fmt: dict) -> Decoded:
    reader = FILE_READERS.get(unit.format)
    if reader is not None:
        return [reader(Path(unit.path), unit.sample_prefix)]
    return list(SEQUENCE_DECODERS[unit.format](unit, fmt))


def decode_unit(unit: Unit, fmt: dict) -> Decoded:
    """Samples of one unit, in order; never raises for bad data.

    A file that cannot be read becomes one QuarantineEntry with sample_id None; a bad frame inside a
    good sequence becomes a QuarantineEntry for that frame. `format.point_range` crops every sample.
    NaN/inf, empty and too-small samples are left for the preprocess stage to judge.
    """
    if "mismatch" in unit.options:
        return [QuarantineEntry(unit.source, None, "unreadable", unit.options["mismatch"])]
    try:
        results = _decode(unit, fmt)
    except SampleError as err:
        return [QuarantineEntry(unit.source, None, err.reason, err.detail)]
    point_range = fmt.get("point_range")
    if point_range is None:
        return results
    return [crop_to_range(r, point_range) if isinstance(r, Sample) else r for r in results]
