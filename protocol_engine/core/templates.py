"""The sandboxed Jinja2 environment card templates render in (undefined names are errors).

Filters show values for people (see display.py): `time` (zone, offset, "today"), `num`, `span`/`duration`
(hours or a rule duration: "7 days", "30 minutes"), `qty` (a setting or value with its conventional unit:
"180 mmHg"), `pair` ("180/100 mmHg"), `unit` (UCUM code -> conventional unit), `times` (2 -> "twice") and
`plural` ("1 draft order", "3 draft orders").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from . import display
from .durations import parse_hours

TEMPLATE_GLOBALS = ("matches", "evidence", "patient_id", "settings", "indicator", "variant", "held", "protocol")
UNITS_KEY = "_display_units"  # the pack's display table, put in every render context by the card renderer
NOW_KEY = "_now"
ZONE_KEY = "_zone"  # the deployment's time zone: `time` shows times there


class Span(float):
    """A value known only as a range (from a reduced-precision date): compares as its low end, prints as both."""

    high: float

    def __new__(cls, low: float, high: float) -> Span:
        value = super().__new__(cls, low)
        value.high = float(high)
        return value

    def __str__(self) -> str:
        return f"{_num(float(self))}-{_num(self.high)}"


def _units(ctx: Context) -> dict[str, str]:
    table = ctx.get(UNITS_KEY)
    return table if isinstance(table, dict) else {}


def _num(value: Any) -> str:
    if isinstance(value, Span):
        return str(value)
    return display.number(value)


def _span(hours: Any, to: Any = None) -> str:
    """A duration for people; with `to`, the range ("30-90 minutes", "2-3 days", "12 h to 2 days")."""
    if to is not None:
        low_h, high_h = _hours(hours), _hours(to)
        if low_h is not None and high_h is not None and high_h < 3:  # "30-90 minutes", not "30 minutes to 1 h 30 min"
            return f"{display.number(round(low_h * 60))}-{display.number(round(high_h * 60))} minutes"
        return _between(display.duration(hours), display.duration(to))
    if isinstance(hours, Span):
        return _between(display.duration(float(hours)), display.duration(hours.high))
    return display.duration(hours)


def _hours(value: Any) -> float | None:
    if isinstance(value, str):
        return parse_hours(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _between(low: str, high: str) -> str:
    low_n, _, low_unit = low.partition(" ")
    high_n, _, high_unit = high.partition(" ")
    if low_unit == high_unit and " " not in low_unit:
        return f"{low_n}-{high_n} {high_unit}"
    return f"{low} to {high}"


_TIMES = {1: "once", 2: "twice"}


def _times(value: Any) -> str:
    """A count as a frequency: 1 -> 'once', 2 -> 'twice', 3 -> '3 times' (`{{ per_week|times }} a week`)."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        return str(value)
    return _TIMES.get(int(n), f"{display.number(n)} times") if n == int(n) else f"{display.number(n)} times"


def _plural(value: Any, word: str, plural: str | None = None) -> str:
    """'1 draft order', '3 draft orders' (`{{ matches|length|plural('draft order') }}`), never 'order(s)'."""
    try:
        one = float(value) == 1
    except (TypeError, ValueError):
        one = False
    return f"{_num(value)} {word if one else (plural or word + 's')}"


@pass_context
def _time(ctx: Context, value: Any) -> str:
    return display.when(value, ctx.get(NOW_KEY), zone=ctx.get(ZONE_KEY) or display.UTC)


@pass_context
def _unit(ctx: Context, code: Any) -> str:
    return display.unit(str(code) if code else None, _units(ctx))


@pass_context
def _bp(ctx: Context, reading: Any) -> str:
    """A blood pressure fact as people write it; a lone systolic is named, not '186/?'."""
    return display.pair_text(reading.get("systolic"), reading.get("diastolic"),
                             display.unit(reading.get("unit"), _units(ctx)))


@pass_context
def _qty(ctx: Context, value: Any, code: str | None = None) -> str:
    if isinstance(value, str) and parse_hours(value) is not None:
        return display.duration(value)
    if isinstance(value, Span):
        shown = display.unit(code, _units(ctx))
        return f"{value} {shown}".strip()
    return display.quantity(value, code or getattr(value, "unit", None), _units(ctx))


@pass_context
def _pair(ctx: Context, first: Any, second: Any, code: str | None = None) -> str:
    code = code or getattr(first, "unit", None) or getattr(second, "unit", None)
    shown = display.unit(code, _units(ctx))
    return f"{_num(first)}/{_num(second)}" + (f" {shown}" if shown else "")


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    # No trim_blocks: under it a line ending in `{% endif %}` lost its newline and glued two sentences
    # ("...is **positive**.Esketamine"). The card renderer folds the blank lines block tags leave.
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, lstrip_blocks=True)
    env.filters["time"] = _time
    env.filters["num"] = _num
    env.filters["span"] = _span
    env.filters["duration"] = _span
    env.filters["qty"] = _qty
    env.filters["bp"] = _bp
    env.filters["pair"] = _pair
    env.filters["unit"] = _unit
    env.filters["times"] = _times
    env.filters["plural"] = _plural
    return env
