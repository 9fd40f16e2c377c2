"""The sandboxed Jinja2 environment card templates render in (undefined names are errors)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_GLOBALS = ("matches", "evidence", "patient_id", "settings", "indicator", "variant")


class Span(float):
    """A value known only as a range (from a reduced-precision date): compares as its low end, prints as both."""

    high: float

    def __new__(cls, low: float, high: float) -> Span:
        value = super().__new__(cls, low)
        value.high = float(high)
        return value

    def __str__(self) -> str:
        return f"{_num(float(self))}-{_num(self.high)}"


def _time(value: Any) -> str:
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: Any) -> str:
    if isinstance(value, Span):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{number:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _span(hours: Any) -> str:
    if isinstance(hours, Span):
        low, high = float(hours), hours.high
        if high >= 48:
            return f"{_num(round(low / 24, 1))}-{_num(round(high / 24, 1))} days"
        return f"{_num(round(low, 1))}-{_num(round(high, 1))} h"
    h = float(hours)
    return f"{_num(round(h, 1))} h" if h < 48 else f"{_num(round(h / 24, 1))} days"


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["time"] = _time
    env.filters["num"] = _num
    env.filters["span"] = _span
    return env
