"""Numbers in card text that restate a setting: the text would keep the old value when the setting changes.

A template prints a threshold through its setting (`{{ systolic_limit|qty }}`), never as a literal. This finds
literals in the text parts of a template (and in string constants) that equal a setting's value: a number equal
to a numeric setting (or a member of a list setting), or a number with a time unit equal to a duration setting
("24 hours" against `lookback: 24h`). Numbers inside identifiers (PHQ-9, CYP3A4, 85354-9) are not values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError

from .durations import parse_hours
from .templates import environment

_TIME_UNITS = {"minute": 1 / 60, "minutes": 1 / 60, "min": 1 / 60, "mins": 1 / 60, "m": 1 / 60,
               "hour": 1.0, "hours": 1.0, "h": 1.0, "hr": 1.0, "hrs": 1.0,
               "day": 24.0, "days": 24.0, "d": 24.0, "week": 168.0, "weeks": 168.0, "w": 168.0,
               "month": 730.5, "months": 730.5, "year": 8766.0, "years": 8766.0, "y": 8766.0}
NUMBER = re.compile(r"(?<![\w.\-\[#])(\d+(?:\.\d+)?)(?![\w.]*\d)(?:\s*(" + "|".join(
    sorted(_TIME_UNITS, key=len, reverse=True)) + r")\b)?")


@dataclass(frozen=True)
class Restated:
    literal: str  # as written ("180", "24 hours"), whitespace folded
    setting: str
    offset: int  # in the template source


def texts(source: str) -> Iterator[str]:
    """The literal text of a template: its data and its string constants (not names or filter arguments)."""
    try:
        ast = environment().parse(source)
    except TemplateSyntaxError:
        return
    for node in ast.find_all((nodes.TemplateData, nodes.Const)):
        if isinstance(node, nodes.TemplateData):
            yield node.data
        elif isinstance(node, nodes.Const) and isinstance(node.value, str):
            yield node.value


def _same(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


def _durations(node: Any, path: str) -> Iterator[tuple[str, float]]:
    """Durations declared in protocol.yaml (`course.post_dose_check.from`), printed as `protocol.<path>`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _durations(value, f"{path}.{key}")
    elif (h := parse_hours(node)) is not None:
        yield path, h


def find(source: str, settings: dict[str, Any], protocol: dict[str, Any] | None = None) -> list[Restated]:
    numeric: list[tuple[str, float]] = []
    # Only the pack's durations: its bare numbers (28 induction days, 6 doses) collide with ordinary prose.
    hours: list[tuple[str, float]] = [(f"protocol{p}", h) for p, h in _durations(protocol or {}, "")]
    for name, value in settings.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                continue
            if isinstance(item, (int, float)):
                numeric.append((name, float(item)))
            elif (h := parse_hours(item)) is not None:
                hours.append((name, h))
    found: list[Restated] = []
    seen: set[int] = set()
    for text in texts(source):
        base = source.find(text) if text else -1
        for m in NUMBER.finditer(text):
            n = float(m.group(1))
            unit = (m.group(2) or "").lower()
            candidates = ([name for name, h in hours if _same(h, n * _TIME_UNITS[unit])] if unit
                          else [name for name, v in numeric if _same(v, n)])
            if unit and not candidates:  # "180 mg" is not a duration; compare the number itself
                candidates = [name for name, v in numeric if _same(v, n)]
            if not candidates:
                continue
            offset = (base if base >= 0 else 0) + m.start()
            if offset in seen:
                continue
            seen.add(offset)
            found.append(Restated(" ".join(m.group(0).split()), candidates[-1], offset))
    return found
