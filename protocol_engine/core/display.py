"""How card text shows times, units, durations and quantities to people.

UCUM codes (`mm[Hg]`, `[IU]/L`) stay in data and rule logic; people read conventional units from the pack's
`display_units` table. Times are shown in the deployment's zone with the offset, relative to the evaluation time
("today 07:13 UTC+01:00"), because a clinician reading "2026-11-21 06:13 UTC" in Zurich has to do arithmetic to
know whether the reading is from this morning. The zone and the evaluation time are arguments (`Local`): the zone
is a setting of the loaded pack (pack/zone.py reads PROTOCOL_ENGINE_TIMEZONE when it loads), `now` the call's.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .durations import parse_hours


def zone_problem(name: str) -> str | None:
    """Why `name` is not a usable IANA time zone, or None."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        return f"unknown time zone '{name}' ({type(exc).__name__}); use an IANA name such as Europe/Zurich"
    return None


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


UTC = ZoneInfo("UTC")


def zone_named(name: str | None) -> ZoneInfo:
    """The zone of an IANA name ('' or None: UTC)."""
    name = (name or "").strip() or "UTC"
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError):  # refused at start (config); never fail a card over it
        return UTC


@dataclass(frozen=True)
class Local:
    """Where and when card text is read: the deployment's zone and the call's evaluation time ("today")."""

    zone: ZoneInfo = UTC
    now: dt.datetime | None = None

    def when(self, value: Any, latest: dt.datetime | None = None) -> str:
        return when(value, self.now, latest, self.zone)

    def day(self, value: dt.date) -> str:
        return day(value, self.now, self.zone)


def offset(local: dt.datetime) -> str:
    delta = local.utcoffset() or dt.timedelta(0)
    if not delta:
        return "UTC"
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _day_word(day: dt.date, ref: dt.datetime | None, z: ZoneInfo) -> str:
    if ref is not None:
        ref_day = (ref if ref.tzinfo else ref.replace(tzinfo=dt.UTC)).astimezone(z).date()
        word = {0: "today", -1: "yesterday", 1: "tomorrow"}.get((day - ref_day).days)
        if word:
            return word
    return f"{day.day} {day:%b %Y}"


def _partial(text: str, ref: dt.datetime | None, z: ZoneInfo) -> str | None:
    """A FHIR date without a time ('2026-11-21', '2026-11', '2026') as written: no invented '00:00 UTC'."""
    found = _PARTIAL.match(text.strip())
    if not found:
        return None
    year, month, day = found.groups()
    try:
        if day is not None:
            return _day_word(dt.date(int(year), int(month), int(day)), ref, z)
        if month is not None:
            return f"{dt.date(int(year), int(month), 1):%b %Y}"
    except ValueError:
        return None
    return year


def precision_text(earliest: dt.datetime, latest: dt.datetime | None) -> str | None:
    """The FHIR date a reduced-precision time was written as ('2026-11-21', '2026-11', '2026'), or None for a
    full time. Dates without a time are read as whole UTC days (adapters/fhir/dates.py)."""
    if latest is None or latest <= earliest:
        return None
    start = earliest.astimezone(dt.UTC)
    end = latest.astimezone(dt.UTC) + dt.timedelta(microseconds=1)
    if start.time() != dt.time(0) or end.time() != dt.time(0):
        return None
    if end - start == dt.timedelta(days=1):
        return f"{start:%Y-%m-%d}"
    if start.day == 1 and end.day == 1 and (end.year * 12 + end.month) - (start.year * 12 + start.month) == 1:
        return f"{start:%Y-%m}"
    if start.month == start.day == end.month == end.day == 1 and end.year - start.year == 1:
        return f"{start:%Y}"
    return None


def when(value: Any, now: dt.datetime | None = None, latest: dt.datetime | None = None,
         zone: ZoneInfo = UTC) -> str:
    """'today 07:13 UTC+01:00', 'yesterday 18:40 UTC', '21 Nov 2026 07:13 UTC' in `zone`, the day word against
    `now`; a date without a time (a string '2026-11-21', or a datetime with the `latest` instant its day covers)
    as the date."""
    if isinstance(value, dt.datetime):
        t = value
        written = precision_text(value, latest)
        if written is not None:
            return _partial(written, now, zone) or written
    elif isinstance(value, str) and (shown := _partial(value, now, zone)) is not None:
        return shown
    else:
        try:
            t = dt.datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    local = t.astimezone(zone)
    day = _day_word(local.date(), now, zone)
    return f"{day} {local:%H:%M} {offset(local)}"


def day(value: dt.date, now: dt.datetime | None = None, zone: ZoneInfo = UTC) -> str:
    """A date without a time ('today', 'yesterday', '21 Nov 2026'): no zone shift, no invented midnight."""
    return _day_word(value, now, zone)


def number(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 10 and x != int(x) else f"{x:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    if x and float(text) == 0:  # never "0" for a value that is not zero (a weight of 0.00001 kg)
        digits = min(-math.floor(math.log10(abs(x))) + 1, 12)
        text = f"{x:.{digits}f}".rstrip("0").rstrip(".")
        if float(text) == 0:
            text = f"{x:.2g}"  # below 1e-12: scientific, still not zero
    return text


def _plural(n: float, word: str) -> str:
    return f"{number(n)} {word}{'' if n == 1 else 's'}"


def duration(value: Any) -> str:
    """Hours (a number) or a rule duration ('156h', '30d') for people: '30 minutes', '24 h', '6 days 12 h'."""
    hours = parse_hours(value) if isinstance(value, str) else None
    if hours is None:
        try:
            hours = float(value)
        except (TypeError, ValueError):
            return str(value)
    minutes = round(hours * 60)
    if minutes < 60:
        return _plural(minutes, "minute")
    if hours < 72:  # clinicians count the first days in hours ("48 h" between induction doses)
        h, m = divmod(minutes, 60)
        return f"{h} h" + (f" {m} min" if m else "")
    if hours >= 168 and round(hours) % 24:  # beyond a week the hours are noise: 173.4 days
        return f"{number(round(hours / 24, 1))} days"
    days, rest_h = divmod(round(hours), 24)
    if rest_h == 0 and days % 365 == 0 and days >= 365:
        return _plural(days // 365, "year")
    if rest_h == 0 and days % 7 == 0 and days >= 14 and days < 365:
        return _plural(days // 7, "week")
    return _plural(days, "day") + (f" {rest_h} h" if rest_h else "")


def unit(code: str | None, table: Mapping[str, str], count: Any = 1) -> str:
    """The conventional unit people read for a UCUM code (the code itself when the table has none)."""
    if not code:
        return ""
    shown = table.get(code, code)
    # A UCUM annotation alone ("{pill}", "{tablet}") is a word: "1 pill", "2 vials", not "2 {vial}".
    if shown.startswith("{") and shown.endswith("}") and shown.count("{") == 1:
        word = shown[1:-1]
        try:
            many = float(count) != 1
        except (TypeError, ValueError):
            many = False
        return f"{word}s" if many and word.isalpha() and not word.endswith("s") else word
    return shown


def pair_text(first: Any, second: Any, shown: str, first_name: str = "systolic",
              second_name: str = "diastolic") -> str:
    """'186/104 mmHg'; a lone half by name: 'systolic 186 mmHg (no diastolic recorded)', never '186/?'."""
    glue = "" if shown.startswith(("%", "/")) or not shown else " "
    if first is not None and second is not None:
        return f"{number(first)}/{number(second)}{glue}{shown}"
    if first is not None:
        return f"{first_name} {number(first)}{glue}{shown} (no {second_name} recorded)"
    if second is not None:
        return f"{second_name} {number(second)}{glue}{shown} (no {first_name} recorded)"
    return "not recorded"


def quantity(value: Any, code: str | None, table: Mapping[str, str]) -> str:
    shown = unit(code, table, value)
    if not shown:
        return number(value)
    # '%' and '/min' attach to the number as people write them (92%, 50/min); words take a space.
    glue = "" if shown.startswith(("%", "/")) else " "
    return f"{number(value)}{glue}{shown}"


class Measured(float):
    """A numeric setting with its UCUM unit, as card templates see it: compares as a number,
    prints as one, and the `qty` filter shows it with its conventional unit."""

    unit: str

    def __new__(cls, value: float, unit: str) -> Measured:
        obj = super().__new__(cls, value)
        obj.unit = unit
        return obj

    def __str__(self) -> str:
        return number(float(self))


def with_units(settings: Mapping[str, Any], units: Mapping[str, str]) -> dict[str, Any]:
    """Settings as templates see them: numbers with a unit carry it, so `qty` shows "180 mmHg"."""
    return {name: Measured(float(value), units[name])
            if name in units and isinstance(value, (int, float)) and not isinstance(value, bool)
            else value for name, value in settings.items()}
