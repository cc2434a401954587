"""Numbers that YAML 1.1 reads as text (1e-3, 1.0e9): the one-line hint that says how to write them."""

from __future__ import annotations

import math
from typing import Any

import yaml


def yaml_number_hint(value: Any, integer: bool = False) -> str:
    """' (YAML reads 1e-3 as text: write 1.0e-3)' when `value` is text that Python reads as a number, else ''.

    PyYAML follows YAML 1.1: a float needs a dot and a signed exponent, so 1e-3 and 1.0e9 stay strings; a
    number YAML does read (0.1) is text only in quotes. With `integer`, the spelling is the whole number
    (5e4 -> 50000), and a fraction gets no hint.
    """
    number = _text_number(value)
    if number is None or (integer and not number.is_integer()):
        return ""
    spelling = str(int(number)) if integer else _yaml_float(value.strip().lower())
    if _yaml_number(spelling) != number:  # the advice must itself read back as the number
        return ""
    if _yaml_number(value) is not None:
        return f" (in quotes, so text: write {spelling} without quotes)"
    return f" (YAML reads {value} as text: write {spelling})"


def _text_number(value: Any) -> float | None:
    """The finite number that the text `value` spells for Python, else None."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _yaml_number(text: str) -> float | None:
    """The number YAML reads from the plain scalar `text`, else None."""
    value = yaml.safe_load(text)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _yaml_float(text: str) -> str:
    """`text` (a float Python reads) spelled so that YAML 1.1 reads it too: 1e-3 -> 1.0e-3, 1.0e9 -> 1.0e+9."""
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}" if exponent else mantissa
