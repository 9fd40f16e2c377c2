"""core/derive (Deriver.facts) on small hand-built charts: typed records in (core/records.py), facts out; no FHIR JSON, no HTTP.

Each test builds the few records it needs with the bundled ketamine pack's declarations (protocol.yaml), so a
failure here names the derivation, not the request path around it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from protocol_engine.core.anchors import Anchor
from protocol_engine.core.records import (
    AdministrationRecord,
    Chart,
    Concept,
    LazyObservation,
    ObservationRecord,
    PatientRecord,
    Quantity,
)
from protocol_engine.core.valuesets import SYSTEMS

NOW = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
LOINC, RXNORM = SYSTEMS["LOINC"], SYSTEMS["RXNORM"]
KETAMINE = Concept(((RXNORM, "6130", "ketamine"),))


def bp(ref: str, systolic: float, diastolic: float, ago: dt.timedelta, status: str = "final") -> LazyObservation:
    """A blood-pressure panel (LOINC 85354-9) with its two components, as the FHIR adapter would hand it over."""
    at = NOW - ago
    record = ObservationRecord(
        ref, Concept(((LOINC, "85354-9", "Blood pressure panel"),)), status, at, Quantity(None, None),
        components=((Concept(((LOINC, "8480-6", "Systolic"),)), Quantity(systolic, "mm[Hg]")),
                    (Concept(((LOINC, "8462-4", "Diastolic"),)), Quantity(diastolic, "mm[Hg]"))))
    return LazyObservation(ref, status, at, ((LOINC, "85354-9"),), lambda: record)


def facts(loaded: Any, chart: Chart, hook: str = "patient-view") -> list[dict[str, Any]]:
    deriver = loaded.packset.packs[0].deriver
    out: list[dict[str, Any]] = deriver.facts(chart, NOW, hook, Anchor("now", NOW))
    return out


def of_type(found: list[dict[str, Any]], t: str) -> list[dict[str, Any]]:
    return [f for f in found if f["t"] == t]


def test_age_is_whole_years_on_the_day(loaded: Any) -> None:
    chart = Chart(patient=PatientRecord("Patient/p", dt.date(1986, 11, 22), "female"))
    [patient] = of_type(facts(loaded, chart), "patient")
    assert patient["age"] == 39 and patient["sex"] == "female" and patient["birthdate_known"] is True


def test_the_newest_valid_bp_governs(loaded: Any) -> None:
    chart = Chart(patient=PatientRecord("Patient/p", dt.date(1980, 1, 1), "male"),
                  observations=[bp("Observation/old", 150, 95, dt.timedelta(hours=5)),
                                bp("Observation/new", 128, 82, dt.timedelta(minutes=30))])
    [reading] = [f for f in of_type(facts(loaded, chart), "measurement") if f["measure"] == "blood-pressure"]
    assert (reading["systolic"], reading["diastolic"]) == (128, 82)
    assert reading["refs"] == ["Observation/new"] and reading["taken_ago"] == 0.5


def test_a_preliminary_reading_is_not_valid(loaded: Any) -> None:
    """G1: only the statuses protocol.yaml's semantics name count; a preliminary BP is not the governing one."""
    chart = Chart(patient=PatientRecord("Patient/p", dt.date(1980, 1, 1), "male"),
                  observations=[bp("Observation/final", 130, 80, dt.timedelta(hours=2)),
                                bp("Observation/prelim", 190, 110, dt.timedelta(minutes=10), status="preliminary")])
    [reading] = [f for f in of_type(facts(loaded, chart), "measurement") if f["measure"] == "blood-pressure"]
    assert reading["refs"] == ["Observation/final"]


def test_the_course_counts_doses_and_hours_since_the_last(loaded: Any) -> None:
    doses = [AdministrationRecord(f"MedicationAdministration/a{d}", KETAMINE, "completed", NOW - dt.timedelta(days=d))
             for d in (9, 6, 3)]
    chart = Chart(patient=PatientRecord("Patient/p", dt.date(1980, 1, 1), "male"), administrations=doses)
    [course] = of_type(facts(loaded, chart), "course")
    assert course["drug"] == "ketamine" and course["doses"] == 3 and course["since_last"] == 72
    assert course["has_prior"] is True and course["new_course"] is False


def test_a_pause_longer_than_the_pack_s_gap_starts_a_new_course(loaded: Any) -> None:
    gap_days = loaded.packset.packs[0].protocol.course.gap_h / 24
    doses = [AdministrationRecord("MedicationAdministration/long-ago", KETAMINE, "completed",
                                  NOW - dt.timedelta(days=gap_days + 1))]
    chart = Chart(patient=PatientRecord("Patient/p", dt.date(1980, 1, 1), "male"), administrations=doses)
    [course] = of_type(facts(loaded, chart), "course")
    assert course["new_course"] is True
