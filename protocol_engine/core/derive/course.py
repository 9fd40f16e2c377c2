"""The treatment course (G9, G10): one segmentation of prior doses, used by timing, response and monitoring.

`protocol.yaml`'s `course:` section is read once, at load time, into a CourseSpec (pack/course_spec.py).
`Course.of` then segments the doses once per request, relative to the moment the hook is about (the anchor).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

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
