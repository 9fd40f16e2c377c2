"""core/derive/course.py: the chart's administrations -> prior doses -> the Course at the anchor -> the `course` fact.

Hand-built administrations (HL7 publishes no ketamine administration) and HL7's published blood-pressure example
as the reading after a dose (MON-08's post-dose check).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hl7_examples import NOW, chart_of, deriver, example

from protocol_engine.core.anchors import Anchor
from protocol_engine.core.derive.course import course_ranges
from protocol_engine.core.records import AdministrationRecord, Chart, Concept
from protocol_engine.core.valuesets import SYSTEMS

KETAMINE = Concept(((SYSTEMS["RXNORM"], "6130", "ketamine"),))
IV = Concept(((SYSTEMS["ROUTE"], "IV", "Intravenous"),))
AT_NOW = Anchor("now", NOW)


def dose(ref: str, days_ago: float, **more: Any) -> AdministrationRecord:
    return AdministrationRecord(f"MedicationAdministration/{ref}", KETAMINE, "completed",
                                NOW - dt.timedelta(days=days_ago), IV, **more)


def test_three_doses_are_an_induction_course(loaded: Any) -> None:
    at = deriver(loaded).courses.at(Chart(administrations=[dose("1", 7), dose("2", 4), dose("3", 2)]), NOW, AT_NOW)
    assert at.late is None and at.undated == []
    assert len(at.course.doses) == 3 and at.course.phase == "induction" and at.course.latest_route() == "iv"


def test_a_pause_longer_than_the_gap_starts_a_new_course(loaded: Any) -> None:
    at = deriver(loaded).courses.at(Chart(administrations=[dose("old", 200), dose("new", 3)]), NOW, AT_NOW)
    assert [d.ref for d in at.course.doses] == ["MedicationAdministration/new"] and len(at.course.all_doses) == 2


def test_a_date_only_dose_gives_a_late_course_and_a_range(loaded: Any) -> None:
    """A dose recorded as a day: placed at the day's start in one course, at its end in the other (read once)."""
    day = (NOW - dt.timedelta(days=2)).replace(hour=0, minute=0)
    undated = AdministrationRecord("MedicationAdministration/x", KETAMINE, "completed", None, IV)
    chart = Chart(administrations=[AdministrationRecord("MedicationAdministration/d", KETAMINE, "completed", day, IV,
                                                        start_latest=day + dt.timedelta(days=1)), undated])
    courses = deriver(loaded).courses
    at = courses.at(chart, NOW, AT_NOW)
    assert at.late is not None and at.late.last.time == day + dt.timedelta(days=1)
    assert [i.ref for i in at.undated] == ["MedicationAdministration/x"]
    fact = courses.fact(at.course, AT_NOW, {})
    course_ranges(fact, courses.fact(at.late, AT_NOW, {}))
    assert fact["ranges"]["since_last"] == [34.0, 58.0] and fact["since_last"] == 34.0  # 19th 00:00 to 24:00


def test_hl7_bp_after_the_last_dose_is_the_post_dose_check(loaded: Any) -> None:
    d = deriver(loaded)
    last = dose("last", 1)
    assert last.start is not None
    bp = example("observation-example-bloodpressure", last.start + dt.timedelta(minutes=45))
    chart = chart_of(bp)
    chart.administrations = [dose("first", 4), last]
    readings, _ = d.measurements.readings(chart, NOW, [])
    at = d.courses.at(chart, NOW, AT_NOW)
    assert d.courses.fact(at.course, AT_NOW, readings)["last_post_dose_check"] is True
    chart.observations = []
    readings, _ = d.measurements.readings(chart, NOW, [])
    assert d.courses.fact(at.course, AT_NOW, readings)["last_post_dose_check"] is False
