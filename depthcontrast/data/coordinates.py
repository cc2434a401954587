"""From the coordinates a file holds to the float32 metres the shards store, without silent loss.

- Integer coordinates (an .npy of centimetres, a PLY with int properties) carry no unit: they are
  converted only when `format.integer_unit_m` says what one step is; otherwise the sample is
  quarantined as `wrong_dtype`.
- float64 coordinates beyond `format.shift_origin_above_m` on an axis (georeferenced clouds: 10^5-10^6 m)
  are shifted by that axis's floor(min) before the float32 cast, which would otherwise round them to
  centimetres or worse. The shift goes into the sample's `origin`, which the shards store per sample,
  so points + origin gives the absolute coordinates back.
- LAS/LAZ tiles are always shifted in x and y by their floor(min) (their reader does it), so every
  tile of a survey lands in the same local range whatever its georeference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from depthcontrast.data.records import Sample
from depthcontrast.errors import SampleError


@dataclass(frozen=True)
class CoordinateRules:
    """How raw coordinates become float32 metres (the `format` block's integer_unit_m, shift_origin_above_m)."""

    integer_unit_m: float | None
    shift_origin_above_m: float

    @classmethod
    def of_format(cls, fmt: dict[str, Any]) -> CoordinateRules:
        """From a validated `format` config block."""
        return cls(fmt["integer_unit_m"], fmt["shift_origin_above_m"])


def local_corner(xyz: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """float64 [3]: floor(min) on `axes` (finite values only), 0 elsewhere."""
    corner = np.zeros(3, dtype=np.float64)
    for axis in axes:
        column = xyz[:, axis]
        finite = column[np.isfinite(column)]
        if finite.size:
            corner[axis] = np.floor(finite.min())
    return corner


def to_float32_metres(sample: Sample, rules: CoordinateRules, source: str) -> Sample:
    """The sample with float32 points, shifted into `origin` where float32 would lose precision.

    Raises SampleError('wrong_dtype') for integer coordinates when no unit is configured.
    """
    points = np.asarray(sample.points)
    if points.ndim != 2 or points.shape[1] != 3:  # the generic checks report the shape
        return sample
    kind = points.dtype.kind
    if kind in "iu":
        if rules.integer_unit_m is None:
            raise SampleError(
                "wrong_dtype",
                f"{source}: integer coordinates ({points.dtype}) have no unit; set format.integer_unit_m to the "
                "size of one step in metres (0.01 for centimetres, 0.001 for millimetres) to convert them",
            )
        points = points.astype(np.float64) * rules.integer_unit_m
        sample = replace(sample, integer_unit_m=rules.integer_unit_m)
    elif kind != "f":  # the generic checks report other types
        return sample
    if points.dtype == np.float32:
        return replace(sample, points=points)  # select_outputs makes it contiguous
    points = points.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        beyond = np.nanmax(np.abs(points), axis=0, initial=0.0) > rules.shift_origin_above_m
    axes = tuple(int(axis) for axis in np.flatnonzero(beyond))
    corner = local_corner(points, axes)
    local = points - corner if axes else points
    return replace(sample, points=local.astype(np.float32), origin=sample.origin + corner)
