"""core/derive/scores.py: the `score` fact (section 3.6), baseline before the course and current after induction.

Hand-built PHQ-9 totals (LOINC 44261-6) and a maintenance course; HL7's published blood-pressure example sits in
the chart too, as a reading that is no score and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hl7_examples import NOW, chart_of, deriver, example

from protocol_engine.core.anchors import Anchor
from protocol_engine.core.derive.scores import score_facts
from protocol_engine.core.records import AdministrationRecord, Concept, LazyObservation, ObservationRecord, Quantity
from protocol_engine.core.valuesets import SYSTEMS

KETAMINE = Concept(((SYSTEMS["RXNORM"], "6130", "ketamine"),))
IV = Concept(((SYSTEMS["ROUTE"], "IV", "Intravenous"),))
PHQ9 = (SYSTEMS["LOINC"], "44261-6")


def phq9(ref: str, value: float, days_ago: float) -> LazyObservation:
    at = NOW - dt.timedelta(days=days_ago)
    record = ObservationRecord(ref, Concept(((*PHQ9, "PHQ-9 total"),)), "final", at, Quantity(value, "{score}"))
    return LazyObservation(ref, "final", at, (PHQ9,), lambda: record)


def scores(loaded: Any, doses_days_ago: list[float], *observations: LazyObservation) -> list[dict[str, Any]]:
    d = deriver(loaded)
    chart = chart_of(example("observation-example-bloodpressure", NOW - dt.timedelta(hours=2)))
    chart.observations += observations
    chart.administrations = [AdministrationRecord(f"MedicationAdministration/{i}", KETAMINE, "completed",
                                                  NOW - dt.timedelta(days=ago), IV)
                             for i, ago in enumerate(doses_days_ago)]
    readings, _ = d.measurements.readings(chart, NOW, [])
    course = d.courses.at(chart, NOW, Anchor("now", NOW)).course
    out: list[dict[str, Any]] = score_facts(d.p, readings, course)
    return out


MAINTENANCE: list[float] = [40, 38, 35, 33, 30, 28, 10]  # six induction doses, then one in maintenance


def test_baseline_and_current_give_the_change(loaded: Any) -> None:
    [score] = scores(loaded, MAINTENANCE, phq9("Observation/base", 20, 45), phq9("Observation/now", 8, 5))
    assert (score["baseline"], score["current"], score["change_pct"], score["rise"]) == (20, 8, 60.0, -12)
    assert score["refs"] == ["Observation/base", "Observation/now"]


def test_a_baseline_older_than_the_declared_window_is_not_one(loaded: Any) -> None:
    """scores.baseline_window (30d, required in protocol.yaml) before the first dose: 100 days before is too old."""
    [score] = scores(loaded, MAINTENANCE, phq9("Observation/old", 20, 140), phq9("Observation/now", 8, 5))
    assert score["has_baseline"] is False and score["has_current"] is True and "change_pct" not in score


def test_no_score_fact_during_induction(loaded: Any) -> None:
    assert scores(loaded, [7.0, 4.0, 2.0], phq9("Observation/base", 20, 10)) == []
