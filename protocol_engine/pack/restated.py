"""Numbers in card text that restate a setting: the text would keep the old value when the setting changes.

A template prints a threshold through its setting (`{{ systolic_limit|qty }}`), never as a literal. This finds
literals in the text parts of a template (and in string constants) that equal a setting's value:

- a bare number equal to a numeric setting (or a member of a list setting): "180" against `systolic_limit`;
- a number with a time unit equal to a duration setting, also as a filter prints it ("6 days 12 h", "1 h 30 min")
  and as either end of a range ("30-90 minutes" against `post_dose_check: {from: 30m, to: 90m}`);
- a number with a unit equal to a setting with a unit after conversion ("500 mcg/kg" is 0.5 mg/kg,
  "25 mIU/mL" is 25 [IU]/L);
- a count in words ("twice weekly") equal to a count setting.

Numbers inside identifiers (PHQ-9, CYP3A4, 85354-9) are not values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError

from ..core import units as ucum
from ..core.durations import parse_hours
from ..core.templates import environment

_TIME_UNITS = {"minute": 1 / 60, "minutes": 1 / 60, "min": 1 / 60, "mins": 1 / 60, "m": 1 / 60,
               "hour": 1.0, "hours": 1.0, "h": 1.0, "hr": 1.0, "hrs": 1.0,
               "day": 24.0, "days": 24.0, "d": 24.0, "week": 168.0, "weeks": 168.0, "w": 168.0,
               "month": 730.5, "months": 730.5, "year": 8766.0, "years": 8766.0, "y": 8766.0}
_TIME = "|".join(sorted(_TIME_UNITS, key=len, reverse=True))
_NUM = r"\d+(?:\.\d+)?"
# A unit as people write it after a number: mg/kg, mcg/kg, mmHg, mIU/mL, %, /min, U/L.
_UNIT = r"%|/[A-Za-z]+|[A-Za-zµ]+(?:\[[A-Za-z_]+\])?(?:/[A-Za-zµ\[\]_]+)?"
NUMBER = re.compile(
    rf"(?<![\w.\-\[#])(?P<a>{_NUM})(?![\w.]*\d)"  # not inside an identifier (PHQ-9, 85354-9, CYP3A4)
    rf"(?:\s*(?:-|–|to)\s*(?P<b>{_NUM})(?![\w.]*\d))?"  # a range: 30-90, 0.1 to 0.75
    rf"(?:(?:\s*|-)(?P<unit>{_UNIT})(?![\w\[]))?"  # 40 minutes, 40-minute, 0.5 mg/kg, 92%
    rf"(?:\s+(?P<c>{_NUM})\s*(?P<cunit>{_TIME})\b)?")  # a duration in two parts: 6 days 12 h, 1 h 30 min
_WORD_COUNTS = {"once": 1, "twice": 2, "thrice": 3, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
# Counts in words only where they state a frequency ("twice weekly", "three times a week"): "once stable" is not.
WORD_COUNT = re.compile(r"\b(?P<w>once|twice|thrice|(?:one|two|three|four|five|six|seven|eight|nine|ten) times)"
                        r"\s+(?:a |per |every )?(?:week|weekly|day|daily|month|monthly)\b", re.I)
# People's spellings -> UCUM, for comparing "500 mcg/kg" with a setting in mg/kg.
_SPELLINGS = (("mcg", "ug"), ("µg", "ug"), ("mmHg", "mm[Hg]"), ("mIU", "m[IU]"), ("IU", "[IU]"))


@dataclass(frozen=True)
class Restated:
    literal: str  # as written ("180", "24 hours", "30-90 minutes"), whitespace folded
    setting: str
    offset: int  # in the template source
    hint: str = ""  # how to print it instead
    also: tuple[str, ...] = ()  # other settings with the same value


@dataclass(frozen=True)
class _Candidate:
    name: str  # a setting name, or `protocol.<path>` (printable in templates), or a protocol.yaml setting path
    value: float  # hours for durations
    unit: str | None  # UCUM; None for a count or a duration
    duration: bool
    rank: int  # lower wins when several settings share a value: the rule's own first
    printable: bool = True  # a template can print it (rule settings, `protocol.` values)

    def hint(self) -> str:
        if not self.printable:
            return (f"name it in words (\"the pack's threshold\"): the value is protocol.yaml's '{self.name}', "
                    "which card templates cannot print")
        how = "|duration" if self.duration else ("|qty" if self.unit else "")
        return f"did you mean '{{{{ {self.name}{how} }}}}'?"


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
    return abs(a - b) < 1e-9 * max(1.0, abs(a), abs(b))


def _durations(node: Any, path: str) -> Iterator[tuple[str, float]]:
    """Durations declared in protocol.yaml (`course.post_dose_check.from`), printed as `protocol.<path>`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _durations(value, f"{path}.{key}")
    elif (h := parse_hours(node)) is not None:
        yield path, h


def _to_ucum(text: str, spellings: Mapping[str, str]) -> str | None:
    """The UCUM code for a unit as written, or None when it is not one (then the number counts as bare)."""
    if text in spellings:
        return spellings[text]
    code = text
    for written, meant in _SPELLINGS:
        code = re.sub(rf"(?<![A-Za-z\[]){re.escape(written)}(?![A-Za-z\]])", meant, code)
    code = spellings.get(code, code)
    return code if _is_ucum(code) else None


@lru_cache(maxsize=1024)
def _is_ucum(code: str) -> bool:
    return ucum.is_ucum(code)


def _candidates(settings: Mapping[str, Any], units: Mapping[str, str], protocol: Mapping[str, Any],
                protocol_settings: Mapping[str, tuple[Any, str | None]]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for name, value in settings.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                continue
            if isinstance(item, (int, float)):
                out.append(_Candidate(name, float(item), units.get(name), False, 0))
            elif (h := parse_hours(item)) is not None:
                out.append(_Candidate(name, h, None, True, 0))
    # Only the pack's durations: its bare numbers (28 induction days, 6 doses) collide with ordinary prose.
    out += [_Candidate(f"protocol{p}", h, None, True, 1) for p, h in _durations(protocol, "")]
    # The pack's values with a unit (hCG threshold 25 [IU]/L) count only when the text gives a unit too.
    for path, (value, unit) in protocol_settings.items():
        if unit and isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(_Candidate(path, float(value), unit, False, 2, printable=False))
    return out


_TIME_NAME = re.compile(r"(?:^|_)(?:min(?:ute)?|hour|day|week|month|year)s?(?:_|$)")


def _range_hint(ends: list[_Candidate | None]) -> str | None:
    """'30 to 90 min' against `post_dose_check: {from: 30m, to: 90m}`: print the range, both ends at once."""
    if len(ends) != 2 or ends[0] is None or ends[1] is None or not (ends[0].printable and ends[1].printable):
        return None
    low, high = ends[0].name, ends[1].name
    if low.endswith(".from") and high.endswith(".to") and low[:-5] == high[:-3] and ends[0].duration:
        return f"did you mean '{{{{ {low}|duration({high}) }}}}'?"
    return None


def _matches(n: float, unit: str | None, hours: float | None, cands: list[_Candidate]) -> list[_Candidate]:
    """The settings the number restates, best first."""
    if hours is not None:
        found = [c for c in cands if c.duration and _same(c.value, hours)]
        # "18 years" against `adult_age: {value: 18, unit: a}`: a number setting in a unit of time
        found += [c for c in cands if not c.duration and c.unit is not None
                  and (f := ucum.factor("h", c.unit)) is not None and _same(hours * f, c.value)]
        if found:
            return sorted(found, key=lambda c: c.rank)
        # "4 weeks" against `induction_weeks: 4`: a count setting stated with its unit - only one whose name says it
        # counts time ("in 3 months" does not restate `multiple: 3`, a count of something else)
        return [c for c in cands if not c.duration and c.unit is None and c.rank == 0 and _same(c.value, n)
                and _TIME_NAME.search(c.name)]
    scored: list[tuple[int, _Candidate]] = []
    for c in cands:
        if c.duration:
            continue
        if unit is not None and c.unit is not None:
            f = 1.0 if unit == c.unit else ucum.factor(unit, c.unit)
            if f is not None and _same(n * f, c.value):
                scored.append((c.rank * 3 + (0 if f == 1.0 else 1), c))
        elif c.rank == 0 and _same(n, c.value):  # a bare number, or a count: the rule's own settings only
            scored.append((2 + (1 if unit is not None else 0), c))
    return [c for _, c in sorted(scored, key=lambda s: s[0])]


def find(source: str, settings: Mapping[str, Any], protocol: Mapping[str, Any] | None = None,
         units: Mapping[str, str] | None = None,
         protocol_settings: Mapping[str, tuple[Any, str | None]] | None = None,
         spellings: Mapping[str, str] | None = None) -> list[Restated]:
    """Literals in `source` that restate a setting. `units`: setting -> UCUM unit; `protocol_settings`: the
    pack's declared values by path with their units; `spellings`: unit as written -> UCUM (the pack's `units:`
    and the reverse of its display table)."""
    cands = _candidates(settings, units or {}, protocol or {}, protocol_settings or {})
    spell = dict(spellings or {})
    found: list[Restated] = []
    seen: set[int] = set()
    for text in texts(source):
        base = max(source.find(text), 0) if text else 0

        def hit(start: int, literal: str, best: list[_Candidate], base: int = base, hint: str | None = None) -> None:
            offset = base + start
            if not best or offset in seen:
                return
            seen.add(offset)
            others = tuple(dict.fromkeys(c.name for c in best[1:] if c.name != best[0].name))
            found.append(Restated(" ".join(literal.split()), best[0].name, offset, hint or best[0].hint(), others))

        for m in NUMBER.finditer(text):
            numbers = [float(m.group("a"))] + ([float(m.group("b"))] if m.group("b") else [])
            if len(numbers) == 2 and numbers[1] < numbers[0]:
                continue  # not a range but a code: LOINC 85354-9
            written = m.group("unit") or ""
            time = _TIME_UNITS.get(written.lower()) if written else None
            code = None if time is not None or not written else _to_ucum(written, spell)
            best: list[_Candidate] = []
            firsts: list[_Candidate | None] = []
            for i, n in enumerate(numbers):
                hours = None
                if time is not None:
                    hours = n * time
                    if m.group("c") and i == len(numbers) - 1:
                        hours += float(m.group("c")) * _TIME_UNITS[m.group("cunit").lower()]
                end = _matches(n, code, hours, cands)
                if not end and time is None and code is None and written and m.group("c") is None:
                    end = _matches(n, None, None, cands)  # "2 doses": a word, not a unit
                best += [c for c in end if c not in best]  # a range restates a setting at each end (50-120/min)
                firsts.append(end[0] if end else None)
            hit(m.start(), m.group(0) if best and (time or code or m.group("b")) else m.group("a"), best,
                hint=_range_hint(firsts))
        counts = [(w.start(), w.group(0), w.group("w")) for w in WORD_COUNT.finditer(text)]
        if text.strip().lower() in ("once", "twice", "thrice"):  # `{{ 'twice' if ... }} weekly`
            counts.append((text.find(text.strip()), text.strip(), text.strip()))
        for start, literal, word in counts:
            count = _WORD_COUNTS.get(word.lower().split()[0])
            if count is not None:
                hit(start, literal, [c for c in cands if not c.duration and c.unit is None and c.rank == 0
                                     and _same(c.value, count)])
    return found
