"""Derived facts a protocol declares, computed generically from typed records and `now`.

The protocol's global semantics (valid statuses, look-back, duplicates, unit conversion, course
and phase) are applied here so rules read pre-aggregated facts: the governing reading of each
measure, the course, the order, the score change. Nothing here names a drug or a code.

One module a concern; `Deriver.facts` (this file) composes them, in this order:

  readings     observations -> Reading (units G3, presence, BP panels and halves G4) -> the governing reading
               (G5) -> `measurement`, `unreadable`, `future` facts
  patient      the `patient` fact (age G13)
  medications  a medicine's protocol drug and route; `condition`, `medication`, `allergy` facts (G6-G8, G11)
  course       the one course model (G9, G10) and the chart's doses -> the `course` fact
  orders       draft or active orders -> `order` and `order-issue` facts (dose, concentration, infusion time)
  scores       the `score` fact (baseline and current, section 3.6)
  common       times and numbers as cards write them, elapsed hours, the pack's statuses
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from .. import display
from ..anchors import Anchor
from ..model import Fact, Rule
from ..records import Chart, Concept
from ..valuesets import ValueSetIndex
from .common import Semantics
from .course import Courses, course_ranges
from .medications import Medicines
from .orders import Orders
from .patient import patient_fact
from .readings import Measurements, ReadingBuilder
from .scores import score_facts

if TYPE_CHECKING:  # the pack's typed declarations; derive reads them, the pack layer builds them
    from ...pack.protocol import Protocol

__all__ = ["Deriver"]


class Deriver:
    """Holds the per-rule-set indexes; `facts()` is pure given (chart, now, hook, anchor)."""

    def __init__(self, protocol: Protocol, index: ValueSetIndex, rules: Iterable[Rule] = (),
                 zone: ZoneInfo = display.UTC) -> None:
        self.p = protocol
        self.index = index
        self.semantics = Semantics.of(protocol, zone)
        self.reading_builder = ReadingBuilder(protocol, index)
        self.measurements = Measurements(self.reading_builder, self.semantics, rules)
        self.medicines = Medicines(protocol, index, self.semantics)
        self.courses = Courses(protocol, self.medicines, self.semantics)
        self.orders = Orders(protocol, index, self.semantics, self.medicines, self.reading_builder)

    @property
    def zone(self) -> ZoneInfo:
        """The deployment's time zone, for the times describe texts and cards show (given by pack/packset.py)."""
        return self.semantics.zone

    def drug_of(self, concept: Concept) -> str | None:
        """The protocol drug of a medication (medications.Medicines.drug_of)."""
        return self.medicines.drug_of(concept)

    def order_in_scope(self, chart: Chart) -> bool:
        """Whether a draft order in scope is (or may be) a protocol drug (orders.Orders.in_scope)."""
        return self.orders.in_scope(chart)

    def facts(self, chart: Chart, now: dt.datetime, hook: str, anchor: Anchor | None = None) -> list[Fact]:
        anchor = anchor or Anchor("now", now)
        local = display.Local(self.semantics.zone, now)  # the describe texts say "today 07:13" against this call's time
        issues = list(chart.issues)
        readings, future = self.measurements.readings(chart, now, issues)
        facts, governing = self.measurements.facts(readings, future, now)
        patient = patient_fact(chart, now)
        if patient is not None:
            facts.append(patient)
        facts.extend(self.medicines.conditions(chart, now))
        facts.extend(self.medicines.medications(chart))
        facts.extend(self.medicines.allergies(chart))
        at = self.courses.at(chart, now, anchor)  # the administrations read once, each placement segmented once
        course = at.course
        course_fact = self.courses.fact(course, anchor, readings, local)
        if at.late is not None:
            course_ranges(course_fact, self.courses.fact(at.late, anchor, readings, local))
        facts.append(course_fact)
        facts.extend(self.orders.facts(chart, hook, governing, course, now))
        facts.extend(score_facts(self.p, readings, course, local))
        for foreign in chart.foreign:
            facts.append({"t": "foreign-record", "refs": [foreign.ref], "problem": foreign.problem,
                          "describe": f"{foreign.ref}: {foreign.problem}"})
        issues += self.medicines.uncoded_conditions(chart)
        issues += at.undated
        # A reading set aside for its status is no result of its measure (MON-10 still asks for a final hCG).
        measured = self.measurements.measured(chart, {issue.ref for issue in issues if not issue.set_aside}, now)
        set_aside: dict[str, list[str]] = {}
        for issue in issues:
            if issue.set_aside:
                set_aside.setdefault(f"set_aside_{issue.set_aside}", []).append(f"{issue.ref}: {issue.problem}")
        for fact in facts:  # a card on an absence (MON-01: no BP) names what was set aside: `order.set_aside_<measure>`
            if fact["t"] == "order":
                fact.update({key: "; ".join(texts) for key, texts in set_aside.items()})
        for issue in issues:  # last: readings validated on demand above may have added some
            fact = {"t": "data-issue", "refs": [issue.ref], "problem": issue.problem,
                    "describe": f"{issue.ref}: {issue.problem}"}
            fact.update(measured.get(issue.ref, {}))
            facts.append(fact)
        for i, fact in enumerate(facts):
            fact["n"] = i  # durable_rules treats equal facts as one; every fact must be distinct
        return facts
