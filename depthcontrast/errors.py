"""The one exception family of the package: user mistakes become one-line messages."""

from __future__ import annotations


class DepthContrastError(Exception):
    """Base class: an error the user can act on; the CLI prints it as one line."""


class ConfigError(DepthContrastError):
    """The configuration is wrong (unknown key, bad type or value)."""


class DataError(DepthContrastError):
    """Input data is missing, unreadable or inconsistent."""


class DownloadError(DataError):
    """A transfer failed, was truncated or did not match its checksum."""


class SampleError(DataError):
    """One sample (scan, frame, sweep) is bad; preprocessing quarantines it with `reason`.

    `reason` is one of QUARANTINE_REASONS so reports can be grouped and tested.
    """

    def __init__(self, reason: str, detail: str):
        if reason not in QUARANTINE_REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


QUARANTINE_REASONS = (
    "unreadable",  # the file cannot be opened or parsed
    "truncated",  # the file ends before its header says it should
    "wrong_dtype",  # values of a type that cannot be points (strings, complex, ...)
    "non_finite",  # NaN or inf coordinates
    "empty",  # zero points, or a 0-byte file
    "out_of_range",  # a coordinate beyond preprocess.max_abs_coordinate_m
    "too_few_points",  # fewer than preprocess.min_points
    "degenerate",  # fewer than preprocess.min_distinct_points distinct points, or extent below min_extent_m
    "unknown_format",  # a file of no known point format (skipped by format.name: auto)
)
