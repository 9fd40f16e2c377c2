"""The treatment course (G9, G10): the one course model, and the chart's doses -> that course -> the `course` fact.

`protocol.yaml`'s `course:` section is read once, at load time, into a CourseSpec (pack/course_spec.py).
`Course.of` then segments the doses once per request, relative to the moment the hook is about (the anchor);
`Courses` (below) finds those doses in the chart and writes the `course` fact timing, response and monitoring read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .. import display
from ..anchors import Anchor
from ..model import Fact
from ..records import Chart, DataIssue
from .common import Semantics, at_text, fmt_time, span
from .medications import Medicines
from .readings import Readings

if TYPE_CHECKING:
    from ...pack.protocol import Protocol

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
    gap_h: float | None = None  # a longer pause starts a new course; None (no `course.gap`): never
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
    latest: dt.datetime | None = None  # recorded as a date only: `time` is the day's start, this its end


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
            if spec.gap_h is not None and _hours(ordered[i - 1].time, ordered[i].time) > spec.gap_h:
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
        gap = self.spec.gap_h
        return not self.doses or (gap is not None and _hours(self.last.time, self.at) > gap)

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


# -- from the chart: doses -> the course at the anchor, and the `course` fact ------------------------------------


@dataclass(frozen=True)
class CourseAt:
    """The course at an anchor (doses recorded as a date only at their day's start), the same doses at their day's
    end when there are such doses (else None), and the protocol doses that could not be placed in time."""

    course: Course
    late: Course | None
    undated: list[DataIssue]


class Courses:
    """The chart's protocol administrations -> prior doses -> the Course at an anchor, and its `course` fact."""

    def __init__(self, protocol: Protocol, medicines: Medicines, semantics: Semantics) -> None:
        self.p = protocol
        self.medicines = medicines
        self.sem = semantics

    def at(self, chart: Chart, now: dt.datetime, anchor: Anchor) -> CourseAt:
        """The one course model (G9, G10) at the anchor, the chart's administrations read once.

        Doses recorded after the anchor (beyond the future tolerance) are not prior doses. A dose recorded as a
        date only is placed at its day's start; when the course holds one, `late` is the same doses placed at
        their day's end (no later than the anchor): facts read from both courses are ranges (core/ranges.py).
        """
        end = min(now, anchor.time)
        horizon = end + dt.timedelta(hours=self.sem.future_tol_h)
        doses: list[Dose] = []
        undated: list[DataIssue] = []
        for a in chart.administrations:
            if a.status not in self.sem.admin_status or (a.start is not None and a.start > horizon):
                continue
            drug = self.medicines.drug_of(a.medication)
            if drug is None:
                continue
            if a.start is None:
                # A dose that cannot be placed in time (no effective time, or only a month or year) is not
                # counted in the course; said, not silently left out.
                undated.append(DataIssue(a.ref, "dose time missing or less precise than a day: not counted in "
                                                "the course (timing checks may be incomplete)"))
                continue
            latest = a.start_latest if a.start_latest is not None and a.start_latest > a.start else None
            doses.append(Dose(a.start, drug, a.status or "", a.ref, self.medicines.route_of(a.route), latest))
        course = self._segment(doses, anchor)
        if not any(d.latest is not None for d in course.all_doses):
            return CourseAt(course, None, undated)
        late = [d if d.latest is None else replace(d, time=max(d.time, min(d.latest, end))) for d in doses]
        return CourseAt(course, self._segment(late, anchor), undated)

    def _segment(self, doses: list[Dose], anchor: Anchor) -> Course:
        if anchor.planned and doses:  # earlier proposed sessions of the same booking: planned doses of the course
            latest = max(doses, key=lambda d: d.time)
            doses = doses + [Dose(t, latest.drug, "planned", ref, latest.route) for t, ref in anchor.planned]
        return Course.of(self.p.course, doses, anchor.time)

    def fact(self, course: Course, anchor: Anchor, readings: dict[str, Readings],
             local: display.Local | None = None) -> Fact:
        local = local or display.Local(self.sem.zone)
        if not course.has_prior:
            return {"t": "course", "doses": 0, "phase": "none", "new_course": True, "has_prior": False,
                    "doses_7d": 0, "refs": [], "until": anchor.phrase(), "describe": "No prior dose recorded"}
        last = course.last
        since = course.since_last_h()
        day = course.course_day()
        phase = course.phase
        refs = [last.ref] + ([anchor.ref] if anchor.ref else [])
        planned = last.status == "planned"  # an earlier proposed session of the same booking
        lead = f"Proposed session (planned {course.drug} dose)" if planned else f"Last {course.drug} dose"
        fact: Fact = {
            "t": "course", "drug": course.drug, "doses": len(course.doses), "phase": phase, "has_prior": True,
            "since_last": since, "new_course": course.new_course,
            "course_day": int(day), "course_week": int(day // 7) + 1,
            "doses_7d": course.doses_within(168.0),
            "induction_complete": phase == "maintenance", "last_at": at_text(last.time, last.latest),
            "last_planned": planned,
            "refs": refs, "until": anchor.phrase(),
            "describe": f"{lead} {fmt_time(local, last.time, last.latest)} ({span(since)} {anchor.phrase()}"
                        f"{f' {fmt_time(local, anchor.time)}' if anchor.ref else ''}, dose {len(course.doses)} of the "
                        f"course, {phase}), {last.ref}",
        }
        check = self.p.course.post_dose_check
        if check and last.status == "completed":
            window = readings.get(check.measure)
            found = window.between(last.time + dt.timedelta(hours=check.from_h),
                                   last.time + dt.timedelta(hours=check.to_h)) if window is not None else []
            fact["last_post_dose_check"] = bool(found)
        return fact


def course_ranges(early: Fact, late: Fact) -> None:
    """The course fact when a dose was recorded as a date only: `early` is read with such doses at the start of
    their day, `late` at its end. Every value that differs becomes a range (core/ranges.py: a rule holding at
    one end only is answered by DQ-04), each end one consistent placement of the doses; the fact keeps the
    late end, the shorter time since the last dose, as `_elapsed_range` does for readings."""
    ranges: dict[str, list[Any]] = {}
    for key, value in early.items():
        if key in ("describe", "refs", "last_at", "until", "t") or isinstance(value, (list, dict)):
            continue
        other = late.get(key)
        if other is not None and other != value:
            ranges[key] = [other, value]
            early[key] = other
    if ranges:
        early["ranges"] = ranges
        early["describe"] = str(early["describe"]).replace(
            f"({span(float(ranges['since_last'][1]))} ",
            f"({span(float(ranges['since_last'][0]))} to {span(float(ranges['since_last'][1]))} ",
            1) if "since_last" in ranges else early["describe"]
