"""The treatment course (G9, G10): one segmentation of prior doses, used by timing, response and monitoring.

`protocol.yaml`'s `course:` section is parsed here once, at load time, into a CourseSpec; every problem is a
positioned Diagnostic (a value the service could not read at request time must never reach a request).
`Course.of` then segments the doses once per request, relative to the moment the hook is about (the anchor).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ..pack import yamlsource
from .durations import parse_hours
from .errors import Diagnostic

_H = 3600.0
_DAY_H = 24.0


@dataclass(frozen=True)
class Induction:
    """G10: induction is the first `doses` doses or the first `days` of the course, whichever ends first."""

    doses: int | None = None
    days: float | None = None


@dataclass(frozen=True)
class PostDoseCheck:
    measure: str
    from_h: float
    to_h: float


@dataclass(frozen=True)
class CourseSpec:
    gap_h: float = 60 * _DAY_H
    induction: dict[str, Induction] = field(default_factory=dict)
    post_dose_check: PostDoseCheck | None = None
    session_h: float = 0.0  # administrations of one drug within this long of a session's first are that session


@dataclass(frozen=True)
class Dose:
    """One prior dose (G9): a MedicationAdministration of a protocol drug."""

    time: dt.datetime
    drug: str
    status: str
    ref: str
    route: str  # a name of protocol.yaml `routes`, "other" or "unspecified"


def _days(value: Any) -> float | None:
    """A number of days: `28` (days), `28d`, `4w`, `672h`. None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    hours = parse_hours(value)
    return None if hours is None else hours / _DAY_H


def parse_course(node: Any, where: str, drugs: list[str],
                 measures: list[str]) -> tuple[CourseSpec, list[Diagnostic]]:
    """`course:` of protocol.yaml -> CourseSpec, with a positioned diagnostic for every value it cannot read."""
    diags: list[Diagnostic] = []

    def error(pos: tuple[int, int], message: str) -> None:
        diags.append(Diagnostic(where, pos[0], pos[1], "bad-duration" if "duration" in message else "schema",
                                message))

    if node is None:
        return CourseSpec(), []
    if not isinstance(node, dict):
        return CourseSpec(), [Diagnostic(where, *yamlsource.node_pos(node), "schema", "course must be a mapping")]
    known = {"gap", "induction", "post_dose_check", "session"}
    for key in node:
        if key not in known:
            error(yamlsource.key_pos(node, key), f"course: unknown key '{key}' (known: {', '.join(sorted(known))})")
    gap_h = 60 * _DAY_H
    if "gap" in node:
        days = _days(node["gap"])
        if days is None or days <= 0:
            error(yamlsource.value_pos(node, "gap"), f"course.gap: '{node['gap']}' is not a positive duration "
                                                     "(a number of days, or like 60d, 8w)")
        else:
            gap_h = days * _DAY_H
    induction: dict[str, Induction] = {}
    ind_node = node.get("induction") or {}
    if not isinstance(ind_node, dict):
        error(yamlsource.value_pos(node, "induction"), "course.induction must map drug names to {doses, days}")
        ind_node = {}
    for drug, spec in ind_node.items():
        if drug not in drugs:
            error(yamlsource.key_pos(ind_node, drug),
                  f"course.induction: '{drug}' is not a drug of this protocol ({', '.join(drugs)})")
            continue
        if not isinstance(spec, dict) or not (set(spec) & {"doses", "days"}) or set(spec) - {"doses", "days"}:
            error(yamlsource.value_pos(ind_node, drug),
                  f"course.induction.{drug}: write {{doses: N}}, {{days: D}} or both")
            continue
        doses = spec.get("doses")
        if doses is not None and (isinstance(doses, bool) or not isinstance(doses, int) or doses < 1):
            error(yamlsource.value_pos(spec, "doses"), f"course.induction.{drug}.doses: '{doses}' is not a "
                                                       "whole number of doses (1 or more)")
            continue
        days = None
        if "days" in spec:
            days = _days(spec["days"])
            if days is None or days <= 0:
                error(yamlsource.value_pos(spec, "days"),
                      f"course.induction.{drug}.days: '{spec['days']}' is not a positive duration "
                      "(a number of days, or like 28d, 4w)")
                continue
        induction[str(drug)] = Induction(doses, days)
    check = None
    check_node = node.get("post_dose_check")
    if check_node is not None:
        if not isinstance(check_node, dict) or "measure" not in check_node:
            error(yamlsource.value_pos(node, "post_dose_check"),
                  "course.post_dose_check needs {measure, from, to}")
        elif check_node["measure"] not in measures:
            error(yamlsource.value_pos(check_node, "measure"),
                  f"course.post_dose_check.measure: '{check_node['measure']}' is not a measure of this protocol")
        else:
            bounds = []
            for key, default in (("from", "30m"), ("to", "90m")):
                hours = parse_hours(check_node.get(key, default))
                if hours is None or hours < 0:
                    error(yamlsource.value_pos(check_node, key),
                          f"course.post_dose_check.{key}: '{check_node.get(key)}' is not a duration (like 30m, 2h)")
                bounds.append(hours or 0.0)
            if not diags and bounds[0] >= bounds[1]:
                error(yamlsource.value_pos(check_node, "to"), "course.post_dose_check: 'to' must be after 'from'")
            check = PostDoseCheck(str(check_node["measure"]), bounds[0], bounds[1])
    session_h = 0.0
    if "session" in node:
        hours = parse_hours(node["session"])
        if hours is None or hours < 0:
            error(yamlsource.value_pos(node, "session"), f"course.session: '{node['session']}' is not a duration "
                                                         "(like 30m, 1h)")
        else:
            session_h = hours
    return CourseSpec(gap_h, induction, check, session_h), diags


def _hours(a: dt.datetime, b: dt.datetime) -> float:
    return (b - a).total_seconds() / _H


def _sessions(ordered: list[Dose], window_h: float) -> list[Dose]:
    """One dose per session: esketamine is recorded one device (28 mg) at a time, minutes apart, and two or
    three such administrations of one drug within the session window are one dose, timed at the first."""
    if window_h <= 0:
        return ordered
    out: list[Dose] = []
    starts: dict[str, dt.datetime] = {}
    for dose in ordered:
        start = starts.get(dose.drug)
        if start is not None and _hours(start, dose.time) <= window_h:
            continue
        starts[dose.drug] = dose.time
        out.append(dose)
    return out


@dataclass(frozen=True)
class Course:
    """The current course at the anchor: its doses (oldest first), phase and induction window.

    A course starts at the first dose after a gap longer than `gap` (G10). Induction is the first N doses
    or the first D days, whichever ends first; the phase is that of a dose given at the anchor.
    """

    spec: CourseSpec
    at: dt.datetime  # the anchor: the moment of the dose the hook is about
    all_doses: tuple[Dose, ...]
    doses: tuple[Dose, ...]

    @classmethod
    def of(cls, spec: CourseSpec, doses: list[Dose], at: dt.datetime) -> Course:
        ordered = _sessions(sorted(doses, key=lambda d: (d.time, d.ref)), spec.session_h)
        start = 0
        for i in range(1, len(ordered)):
            if _hours(ordered[i - 1].time, ordered[i].time) > spec.gap_h:
                start = i
        return cls(spec, at, tuple(ordered), tuple(ordered[start:]))

    @property
    def has_prior(self) -> bool:
        return bool(self.doses)

    @property
    def last(self) -> Dose:
        return self.doses[-1]

    @property
    def first(self) -> Dose:
        return self.doses[0]

    @property
    def drug(self) -> str:
        return self.last.drug

    @property
    def induction(self) -> Induction:
        return self.spec.induction.get(self.drug, Induction())

    def since_last_h(self) -> float:
        return round(_hours(self.last.time, self.at), 4)

    @property
    def new_course(self) -> bool:
        """A dose at the anchor starts a new course (G10)."""
        return not self.doses or _hours(self.last.time, self.at) > self.spec.gap_h

    def course_day(self) -> float:
        return _hours(self.first.time, self.at) / _DAY_H

    def _in_window(self, index: int, t: dt.datetime) -> bool:
        ind = self.induction
        return ((ind.doses is None or index < ind.doses)
                and (ind.days is None or _hours(self.first.time, t) / _DAY_H < ind.days))

    @property
    def in_induction(self) -> bool:
        """Would a dose at the anchor fall inside the induction window?"""
        return self._in_window(len(self.doses), self.at)

    @property
    def phase(self) -> str:
        if not self.doses:
            return "none"
        return "induction" if self.in_induction else "maintenance"

    def induction_doses(self) -> tuple[Dose, ...]:
        return tuple(d for i, d in enumerate(self.doses) if self._in_window(i, d.time))

    def doses_within(self, hours: float) -> int:
        """Doses (of every course) in the `hours` before the anchor: a rolling window ending at the dose.

        The doses are those recorded up to the anchor (the deriver drops later ones), so none is after it
        by more than the future tolerance.
        """
        return sum(1 for d in self.all_doses if _hours(d.time, self.at) < hours)

    def latest_route(self) -> str:
        """The route of the latest dose whose route is recorded (G9 administrations carry it)."""
        for dose in reversed(self.doses):
            if dose.route != "unspecified":
                return dose.route
        return "unspecified"
