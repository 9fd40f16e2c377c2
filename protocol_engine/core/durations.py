"""Time windows as rule files write them (`30m`, `24h`, `14d`, `2w`, `1y`), in hours; whole years of age."""

from __future__ import annotations

import datetime as dt
import re

_UNITS_H = {"m": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0, "y": 8766.0}
_PATTERN = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(m|h|d|w|y)\s*$")


def parse_hours(text: object) -> float | None:
    """Return the duration in hours, or None when it is not a duration."""
    if not isinstance(text, str):
        return None
    found = _PATTERN.match(text)
    if not found:
        return None
    return float(found.group(1)) * _UNITS_H[found.group(2)]


def whole_years(birth: dt.date, on: dt.date) -> int:
    """G13: completed years of age on a day."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
