"""The sandboxed Jinja2 environment card templates render in (undefined names are errors)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_GLOBALS = ("matches", "evidence", "patient_id", "settings")


def _time(value: Any) -> str:
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{number:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _span(hours: Any) -> str:
    h = float(hours)
    return f"{_num(round(h, 1))} h" if h < 48 else f"{_num(round(h / 24, 1))} days"


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["time"] = _time
    env.filters["num"] = _num
    env.filters["span"] = _span
    return env
