"""Per-point input features a backbone reads besides xyz, taken from a sample's shard features.

A backbone that reads features (PointNet-MSG: intensity, as DepthContrast and OpenPCDet's KITTI
PointRCNN, whose `input_channels` 4 = x, y, z, intensity) gets them as extra columns after xyz.
Intensity comes in sensor-specific units (KITTI reflectance in [0, 1], 8-bit, 16-bit LAS up to
65535), so it is divided by `intensity_max` (a constant such as 1, 255 or 65535) or, when that is
None, by each cloud's own largest intensity; either way it lands in [0, 1] like the KITTI
reflectance OpenPCDet reads. A cloud whose intensities are all 0 keeps zeros. Colour (`rgb`, read only
by the MinkUNet voxel encoder) becomes rgb / 255 − 0.5, the original's MinkUNet input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from depthcontrast.errors import DataError

FEATURE_CHANNELS = {"intensity": 1, "rgb": 3}  # the features a backbone can read, and their widths
RGB_SCALE, RGB_SHIFT = 255.0, 0.5  # rgb (uint8 in the shards) is read as rgb / 255 − 0.5, as the original's MinkUNet


@dataclass(frozen=True)
class InputFeatures:
    """Which shard features a backbone reads, in order (none: xyz only), and how intensity is scaled (None: by
    each cloud's largest)."""

    names: tuple[str, ...] = ()
    intensity_max: float | None = None

    @property
    def channels(self) -> int:
        return sum(FEATURE_CHANNELS[name] for name in self.names)

    def missing_from(self, feature_names: Sequence[str]) -> list[str]:
        """The wanted features a dataset with `feature_names` does not have."""
        return [name for name in self.names if name not in feature_names]

    def columns(
        self,
        count: int,
        features: np.ndarray | None,
        feature_names: Sequence[str],
        feature_channels: Sequence[int],
        source: str,
        missing_as_zeros: bool = False,
        present: Sequence[int] | None = None,
    ) -> np.ndarray:
        """float32 [count, channels] from a sample's shard features [count, sum(feature_channels)] (or None).

        `present` (the sample's feature_present record, aligned with `feature_names`) marks the features this
        sample lacks: they read as zeros. A wanted feature the shards lack is a DataError naming `source`,
        or zeros with `missing_as_zeros`.
        """
        offsets = dict(zip(feature_names, np.cumsum([0, *feature_channels[:-1]]).tolist(), strict=True))
        flags = present if present is not None else [1] * len(feature_names)
        absent = {name for name, flag in zip(feature_names, flags, strict=True) if not flag}
        out = []
        for name in self.names:
            width = FEATURE_CHANNELS[name]
            if name in absent:
                out.append(np.zeros((count, width), np.float32))
                continue
            if name not in offsets or features is None:
                if not missing_as_zeros:
                    have = ", ".join(feature_names) or "none"
                    raise DataError(f"{source}: the shards have no {name!r} feature (features: {have})")
                out.append(np.zeros((count, width), np.float32))
                continue
            column = np.asarray(features[:, offsets[name] : offsets[name] + width], dtype=np.float32)
            if name == "intensity":
                column = self._scale_intensity(column)
            elif name == "rgb":
                column = column / np.float32(RGB_SCALE) - np.float32(RGB_SHIFT)
            out.append(column)
        return np.concatenate(out, axis=1) if out else np.zeros((count, 0), np.float32)

    def _scale_intensity(self, intensity: np.ndarray) -> np.ndarray:
        divisor = self.intensity_max if self.intensity_max is not None else float(intensity.max(initial=0.0))
        return intensity / np.float32(divisor) if divisor > 0 else intensity
