"""core/derive/readings.py: observations -> Reading (units, panels, halves), the governing reading, measurement facts.

Inputs are HL7's published R4 examples (tests/hl7_examples.py) where one fits, and small hand-built records for the
cases HL7 does not publish (two standalone halves of a BP).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hl7_examples import NOW, chart_of, deriver, example

from protocol_engine.core.records import Concept, DataIssue, LazyObservation, ObservationRecord, Quantity
from protocol_engine.core.valuesets import SYSTEMS

LOINC = SYSTEMS["LOINC"]


def measured(loaded: Any, *resources: dict[str, Any]) -> tuple[list[dict[str, Any]], list[DataIssue]]:
    """The measurement-side facts of a chart holding `resources`, and the data issues found on the way."""
    m = deriver(loaded).measurements
    chart = chart_of(*resources)
    issues = list(chart.issues)
    readings, future = m.readings(chart, NOW, issues)
    facts, _ = m.facts(readings, future, NOW)
    return facts, issues


def test_hl7_bp_panel_is_one_reading_with_both_halves(loaded: Any) -> None:
    """HL7's blood-pressure example (LOINC 85354-9 panel, 107/60 mm[Hg]) taken 30 minutes ago governs."""
    facts, issues = measured(loaded, example("observation-example-bloodpressure", NOW - dt.timedelta(minutes=30)))
    [bp] = [f for f in facts if f["t"] == "measurement" and f["measure"] == "blood-pressure"]
    assert (bp["systolic"], bp["diastolic"], bp["taken_ago"]) == (107, 60, 0.5)
    assert bp["refs"] == ["Observation/blood-pressure"] and bp["unit"] == "mm[Hg]" and not issues


def test_hl7_bp_with_an_absent_diastolic_uses_the_systolic_and_names_the_missing_half(loaded: Any) -> None:
    """HL7's '-dar' example: the diastolic has a dataAbsentReason; the systolic is still read (a lone 192 matters)."""
    facts, _ = measured(loaded, example("observation-example-bloodpressure-dar", NOW - dt.timedelta(minutes=30)))
    [bp] = [f for f in facts if f["t"] == "measurement"]
    assert bp["systolic"] == 107 and "diastolic" not in bp
    [unreadable] = [f for f in facts if f["t"] == "unreadable"]
    assert unreadable["partial"] is True and "diastolic: value absent (dataAbsentReason" in unreadable["problem"]


def test_hl7_body_weight_in_pounds_converts_to_kilograms(loaded: Any) -> None:
    """HL7's body-weight example writes 185 [lb_av]: G3 converts it to the measure's kg."""
    facts, _ = measured(loaded, example("observation-example", NOW - dt.timedelta(days=1)))
    [weight] = [f for f in facts if f["t"] == "measurement" and f["measure"] == "weight"]
    assert round(weight["value"], 2) == 83.91 and weight["taken_ago"] == 24


def test_a_date_only_reading_is_a_range_of_elapsed_time(loaded: Any) -> None:
    """HL7's heart-rate example is dated 1999-07-02 (a day, no time): taken_ago spans that day, `at` is the date."""
    facts, _ = measured(loaded, example("observation-example-heart-rate"))
    [hr] = [f for f in facts if f["t"] == "measurement" and f["measure"] == "heart-rate"]
    low, high = hr["ranges"]["taken_ago"]
    assert high - low == 24 and hr["taken_ago"] == low and hr["at"] == "1999-07-02" and hr["value"] == 44


def test_a_reading_dated_after_the_tolerance_is_future_not_measured(loaded: Any) -> None:
    facts, _ = measured(loaded, example("observation-example-heart-rate", NOW + dt.timedelta(minutes=10)))
    assert [f["t"] for f in facts if f.get("measure") == "heart-rate"] == ["future"]


def half(ref: str, code: str, value: float, ago: dt.timedelta) -> LazyObservation:
    at = NOW - ago
    record = ObservationRecord(ref, Concept(((LOINC, code, None),)), "final", at, Quantity(value, "mm[Hg]"))
    return LazyObservation(ref, "final", at, ((LOINC, code),), lambda: record)


def test_standalone_halves_within_the_pairing_window_are_one_reading(loaded: Any) -> None:
    """G4: a systolic (8480-6) and a diastolic (8462-4) one minute apart pair; the builder is the Readings' own."""
    m = deriver(loaded).measurements
    chart = chart_of()
    chart.observations += [half("Observation/s", "8480-6", 150, dt.timedelta(minutes=5)),
                           half("Observation/d", "8462-4", 95, dt.timedelta(minutes=6))]
    readings, _ = m.readings(chart, NOW, [])
    bp = readings["blood-pressure"]
    assert bp.build is m.build  # Readings builds through the public ReadingBuilder, no private reach-in
    best, bad = m.governing(m.p.measures["blood-pressure"], bp, NOW)
    assert best is not None and bad is None
    assert best.values == {"systolic": 150, "diastolic": 95} and best.refs == ["Observation/s", "Observation/d"]


def test_the_builder_converts_and_refuses_units(loaded: Any) -> None:
    build = deriver(loaded).reading_builder
    weight = build.p.measures["weight"]
    assert build.convert(weight, Quantity(2000, "g")) == (2.0, "")
    assert build.convert(weight, Quantity(70, None)) == (None, "unit missing")
    value, problem = build.convert(weight, Quantity(70, "mm[Hg]"))
    assert value is None and "not convertible to kg" in problem
