"""The chart builder on its own (adapters/fhir/normalise.to_chart): FHIR JSON -> the typed Chart of core/records.py.

Inputs are HL7's published R4 examples (tests/corpus/hl7-r4, CC0: data this project did not write) and, beside them,
the same reading written in the rule files' shorthand (authoring/vignette.py), which must read the same way."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

from adapters.fhir import normalise
from protocol_engine.authoring.vignette import expand
from protocol_engine.core.records import DataIssue, ObservationRecord

HL7 = Path(__file__).resolve().parent / "corpus" / "hl7-r4"
LOINC = "http://loinc.org"


def hl7(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((HL7 / f"{name}.json").read_text())
    return resource


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def test_hl7_s_blood_pressure_panel_reads_as_one_dated_reading_with_both_components() -> None:
    chart = normalise.to_chart([searchset(hl7("observation-example-bloodpressure"))], None, None,
                               patient_id="example")
    [obs] = chart.observations
    assert (obs.ref, obs.status, obs.codes) == ("Observation/blood-pressure", "final", ((LOINC, "85354-9"),))
    # effectiveDateTime "2012-09-17" is a day: the reading is known to lie within it, never "at midnight"
    assert obs.time == dt.datetime(2012, 9, 17, tzinfo=dt.UTC) and obs.time_latest is not None
    assert obs.time_latest.date() == obs.time.date() and obs.time_latest > obs.time
    record = obs.record()
    assert isinstance(record, ObservationRecord)
    assert {c.codings[0][1]: (q.value, q.unit) for c, q in record.components} == {
        "8480-6": (107.0, "mm[Hg]"), "8462-4": (60.0, "mm[Hg]")}
    assert chart.issues == [] and chart.foreign == []


def test_a_component_with_a_data_absent_reason_keeps_the_reason_not_a_number() -> None:
    chart = normalise.to_chart([searchset(hl7("observation-example-bloodpressure-dar"))], None, None,
                               patient_id="example")
    record = chart.observations[0].record()
    assert isinstance(record, ObservationRecord)
    diastolic = next(q for c, q in record.components if c.codings[0][1] == "8462-4")
    assert diastolic.value is None and diastolic.absent == "not-performed"


def test_another_patient_s_reading_is_set_aside_and_said() -> None:
    chart = normalise.to_chart([searchset(hl7("observation-example-bloodpressure"))], None, None,
                               patient_id="someone-else")
    assert chart.observations == []
    assert chart.foreign == [DataIssue("Observation/blood-pressure", "its subject is another patient")]


def test_hl7_s_medication_request_as_a_draft_order_reads_its_contained_medication_route_and_dose_range() -> None:
    order = {**hl7("medicationrequest0301"), "status": "draft"}
    chart = normalise.to_chart([], {"resourceType": "Bundle", "entry": [{"resource": order}]}, None,
                               patient_id="pat1")
    [(record, selected)] = chart.draft_orders
    assert selected and record.ref == "MedicationRequest/medrx0301" and record.kind == "request"
    assert ("http://snomed.info/sct", "430127000") in {c[:2] for c in record.medication.codings}  # from #med0310
    assert record.route is not None and record.route.codings[0][1] == "26643006"
    assert record.dose_low is not None and record.dose is not None
    assert (record.dose_low.value, record.dose.value, record.dose.unit) == (1.0, 2.0, "TAB")  # doseRange 1-2
    assert record.authored_day_only and chart.order_issues == []


def test_only_the_selected_order_is_judged_at_order_select() -> None:
    first = {**hl7("medicationrequest0301"), "status": "draft"}
    second = {**copy.deepcopy(first), "id": "medrx0302"}
    bundle = {"resourceType": "Bundle", "entry": [{"resource": first}, {"resource": second}]}
    chart = normalise.to_chart([], bundle, ["MedicationRequest/medrx0302"], patient_id="pat1")
    assert [(o.ref, s) for o, s in chart.draft_orders] == [("MedicationRequest/medrx0301", False),
                                                           ("MedicationRequest/medrx0302", True)]


def test_the_shorthand_reading_reads_like_the_hl7_one() -> None:
    now = dt.datetime(2012, 9, 17, 12, tzinfo=dt.UTC)
    written = expand({"observation": "LOINC#85354-9", "at": "-2h", "components": {
        "LOINC#8480-6": "107 mm[Hg]", "LOINC#8462-4": "60 mm[Hg]"}}, now, "example", 0)
    ours = normalise.to_chart([searchset(written)], None, None, patient_id="example").observations[0].record()
    theirs = normalise.to_chart([searchset(hl7("observation-example-bloodpressure"))], None, None,
                                patient_id="example").observations[0].record()
    assert isinstance(ours, ObservationRecord) and isinstance(theirs, ObservationRecord)

    def values(record: ObservationRecord) -> dict[str | None, tuple[float | None, str | None]]:
        return {next(c[1] for c in concept.codings if c[0] == LOINC): (q.value, q.unit)
                for concept, q in record.components}

    assert values(ours) == values(theirs) and ours.status == theirs.status == "final"


def test_observations_are_validated_only_when_a_rule_reads_them() -> None:
    chart = normalise.to_chart([searchset(hl7("observation-example-bloodpressure"))], None, None,
                               patient_id="example")
    obs = chart.observations[0]
    assert obs._value is None  # cheap fields only: code, status, time
    assert isinstance(obs.record(), ObservationRecord) and obs._value is not None
