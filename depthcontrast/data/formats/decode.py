"""Decoding: one unit → its samples, with bad files and frames turned into quarantine entries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from depthcontrast.data.coordinates import CoordinateRules, to_float32_metres
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
    return replace(
        sample,
        points=points[keep],
        features={name: values[keep] for name, values in sample.features.items()},
        labels=None if sample.labels is None else sample.labels[keep],
    )


def _decode(unit: Unit, fmt: dict) -> Decoded:
    reader = FILE_READERS.get(unit.format)
    if reader is not None:
        path = Path(unit.path)
        if path.is_file() and path.stat().st_size == 0:
            raise SampleError("empty", f"{path}: empty file (0 bytes)")
        return [reader(path, unit.sample_prefix)]
    return list(SEQUENCE_DECODERS[unit.format](unit, fmt))


def _finished(result: Sample | QuarantineEntry, unit: Unit, fmt: dict) -> Sample | QuarantineEntry:
    """A decoded sample in float32 metres, cropped to `format.point_range`; a quarantine entry as it is."""
    if not isinstance(result, Sample):
        return result
    try:
        sample = to_float32_metres(result, CoordinateRules.of_format(fmt), unit.source)
    except SampleError as err:
        return QuarantineEntry(unit.source, result.sample_id, err.reason, err.detail)
    point_range = fmt.get("point_range")
    return sample if point_range is None else crop_to_range(sample, point_range)


def decode_unit(unit: Unit, fmt: dict) -> Decoded:
    """Samples of one unit, in order; never raises for bad data.

    A file that cannot be read becomes one QuarantineEntry with sample_id None; a bad frame inside a
    good sequence becomes a QuarantineEntry for that frame. Coordinates become float32 metres
    (coordinates.py), then `format.point_range` crops every sample. NaN/inf, empty, out-of-range,
    degenerate and too-small samples are left for the preprocess stage to judge.
    """
    if "mismatch" in unit.options:
        return [QuarantineEntry(unit.source, None, "unreadable", unit.options["mismatch"])]
    try:
        results = _decode(unit, fmt)
    except SampleError as err:
        return [QuarantineEntry(unit.source, None, err.reason, err.detail)]
    return [_finished(result, unit, fmt) for result in results]
