"""FHIR date and dateTime values as intervals: reduced precision is a range, never "missing".

FHIR R4 allows `2009`, `2009-05`, `2009-05-03` (date, dateTime) and a full time with an offset. A value
with less than a time of day stands for every instant it covers: `2009` is 2009-01-01 00:00 up to
2009-12-31 24:00. A date without a time carries no time zone, so the whole day is read in UTC.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Any

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def bounds(value: Any) -> tuple[dt.datetime, dt.datetime] | None:
    """(earliest, latest) instants of a FHIR date/dateTime/instant (string, date or datetime); None if unreadable.

    `latest` is the last microsecond the value covers, so a full timestamp has earliest == latest.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return aware, aware
    if isinstance(value, dt.date):
        return _days(value.year, value.month, value.day, value.month, value.day)
    if not isinstance(value, str):
        return None
    text = value.strip()
    found = _PARTIAL.match(text)
    if found:
        year, month, day = found.groups()
        y = int(year)
        try:
            if month is None:
                return _days(y, 1, 1, 12, 31)
            m = int(month)
            if day is None:
                return _days(y, m, 1, m, calendar.monthrange(y, m)[1])
            return _days(y, m, int(day), m, int(day))
        except (ValueError, calendar.IllegalMonthError):
            return None
    if "T" not in text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return bounds(parsed)


def _days(year: int, m1: int, d1: int, m2: int, d2: int) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, m1, d1, tzinfo=dt.UTC)
    end = dt.datetime(year, m2, d2, tzinfo=dt.UTC) + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return start, end
