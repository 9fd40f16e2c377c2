"""Hook semantics (issue 15): each hook checks the moment, the drug and the route it is about.

Vignettes written as an EHR sends each hook (appointment-book with an `appointments` Bundle of proposed
Appointments, encounter-start with `encounterId` and its Encounter), HL7-example-shaped Appointment and
Encounter resources, the fetch path for a missing Encounter, and metamorphic checks: an unrelated active
medicine must not change the cards at any hook.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import request_for
from fhir_server import FhirServer

from protocol_engine.hooks.evaluate import Decision, evaluate
from protocol_engine.hooks.gather import gather
from protocol_engine.hooks.pipeline import run
from protocol_engine.hooks.prepare import prepare

NOW = dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC)
IV = "SNOMED#47625008 Intravenous route"
KETAMINE = "RXNORM#6130 ketamine"
ESKETAMINE = "RXNORM#2201625 esketamine"
ADULT = {"birthDate": "-40y", "gender": "female"}
SERTRALINE = {"medication": "RXNORM#312940 sertraline 100 MG Oral Tablet", "id": "sertraline"}
SERVICE = {"order-select": "ketamine-order-select", "order-sign": "ketamine-order-sign",
           "patient-view": "ketamine-patient-view", "appointment-book": "ketamine-appointment-book",
           "encounter-start": "ketamine-encounter-start"}


def maintenance(last: str = "-1d", route: str | None = IV) -> list[dict[str, Any]]:
    """Six induction infusions 40-29 days ago, then a maintenance dose at `last` (coded IV)."""
    doses = [f"-{d}d" for d in (40, 38, 36, 33, 31, 29)] + [last]
    extra = {"route": route} if route else {}
    return [{"administration": KETAMINE, "at": at, "id": f"dose-{i}", **extra} for i, at in enumerate(doses)]


def call(loaded: Any, hook: str, case: dict[str, Any], body: dict[str, Any] | None = None) -> Decision:
    service = SERVICE[hook]
    request = body if body is not None else request_for(loaded, service, {"patient": ADULT, **case}, NOW)
    return run(loaded.runtimes, "test", service, request, NOW)


def rules(outcome: Decision) -> set[str]:
    return {c["extension"]["protocol-engine"]["rule"] for c in outcome.cards}


def card(outcome: Decision, rule: str) -> dict[str, Any]:
    return next(c for c in outcome.cards if c["extension"]["protocol-engine"]["rule"] == rule)


# -- the vignettes of the issue ----------------------------------------------------------
def test_patient_view_unrelated_active_medicine_and_schizophrenia_gives_ci10(loaded: Any) -> None:
    case = {"order": None, "given": [*maintenance("-6d"), SERTRALINE,
                                     {"condition": "ICD10#F20.9 Schizophrenia, unspecified", "id": "scz"}]}
    outcome = call(loaded, "patient-view", case)
    assert "CI-10" in rules(outcome)
    assert "Condition/scz" in card(outcome, "CI-10")["extension"]["protocol-engine"]["evidence"]
    scope = next(f for f in outcome.facts if f["t"] == "order")
    assert scope["drug"] == "ketamine" and scope["route"] == "iv"


def test_encounter_start_severe_bp_gives_ci05_with_sertraline_active(loaded: Any) -> None:
    bp = {"observation": "LOINC#85354-9", "at": "-10m", "id": "bp-pre",
          "components": {"LOINC#8480-6": "186 mm[Hg]", "LOINC#8462-4": "104 mm[Hg]"}}
    case = {"order": None, "given": [*maintenance("-7d"), SERTRALINE, bp], "encounter": {"start": "-15m"}}
    outcome = call(loaded, "encounter-start", case)
    assert card(outcome, "CI-05")["indicator"] == "critical"


def test_booking_4_days_after_the_last_maintenance_dose_gives_tim01(loaded: Any) -> None:
    case = {"order": None, "given": [*maintenance("-1d"), SERTRALINE],
            "appointments": [{"id": "apt-1", "start": "+3d", "type": "Ketamine infusion"}]}
    outcome = call(loaded, "appointment-book", case)
    tim = card(outcome, "TIM-01")
    assert "Appointment/apt-1" in tim["extension"]["protocol-engine"]["evidence"]
    assert "Appointment/apt-1" in tim["detail"] and "4 days before the booked session" in tim["summary"]


def test_dose_3h_ago_and_a_booking_7_days_ahead_is_no_duplicate(loaded: Any) -> None:
    case = {"order": None, "given": maintenance("-3h"),
            "appointments": [{"start": "+7d", "type": "Ketamine infusion"}]}
    outcome = call(loaded, "appointment-book", case)
    assert not rules(outcome) & {"TIM-01", "TIM-02"}
    course = next(f for f in outcome.facts if f["t"] == "course")
    assert course["since_last"] == pytest.approx(7 * 24 + 3)


def test_a_booking_30_days_out_gives_tim04(loaded: Any) -> None:
    case = {"order": None, "given": maintenance("-2d"),
            "appointments": [{"id": "far", "start": "+30d", "type": "Ketamine infusion"}]}
    outcome = call(loaded, "appointment-book", case)
    assert rules(outcome) == {"TIM-04"}
    assert "Appointment/far" in card(outcome, "TIM-04")["extension"]["protocol-engine"]["evidence"]


def test_esketamine_week_2_booking_3_days_ahead_is_within_the_label(loaded: Any) -> None:
    given = [{"administration": ESKETAMINE, "at": at} for at in ("-8d", "-4d", "-1d")]
    booked = call(loaded, "appointment-book", {"order": None, "given": given,
                                               "appointments": [{"start": "+3d", "type": "Spravato session"}]})
    assert "TIM-03" not in rules(booked)
    # The same chart judged at now (as the old code did for every hook) has 2 doses in 7 days: TIM-03.
    signed = call(loaded, "order-sign", {"order": {"medication": ESKETAMINE, "dose": "56 mg"}, "given": given})
    assert "TIM-03" in rules(signed)


def test_encounter_start_maintenance_iv_session_without_weight_gives_mon06(loaded: Any) -> None:
    case = {"order": None, "given": maintenance("-7d"), "encounter": {"start": "-5m", "status": "in-progress"}}
    outcome = call(loaded, "encounter-start", case)
    assert "MON-06" in rules(outcome)
    weighed = call(loaded, "encounter-start", {**case, "given": [
        *maintenance("-7d"), {"observation": "LOINC#29463-7", "value": "70 kg", "at": "-2d"}]})
    assert "MON-06" not in rules(weighed)


def test_route_comes_from_the_course_even_with_an_active_ketamine_order_without_route(loaded: Any) -> None:
    case = {"order": {"medication": KETAMINE, "dose": "35 mg"}, "given": maintenance("-7d")}
    outcome = call(loaded, "encounter-start", case)
    assert next(f for f in outcome.facts if f["t"] == "order")["route"] == "iv"
    assert "MON-06" in rules(outcome)


# -- appointment-book as EHRs send it ----------------------------------------------------
def hl7_appointment(appointment_id: str, start: str, patient: str = "test-patient") -> dict[str, Any]:
    """Shaped like HL7's published Appointment examples (serviceCategory/serviceType/specialty/appointmentType,
    reasonReference, participants with type and required), in the proposed state appointment-book carries."""
    end = (dt.datetime.fromisoformat(start) + dt.timedelta(hours=2)).isoformat()
    return {
        "resourceType": "Appointment", "id": appointment_id, "status": "proposed",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ketamine session</div>"},
        "serviceCategory": [{"coding": [{"system": "http://example.org/service-category", "code": "psych",
                                         "display": "Psychiatry"}]}],
        "serviceType": [{"coding": [{"code": "ket-inf", "display": "Ketamine infusion"}]}],
        "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": "394587001",
                                   "display": "Psychiatry"}]}],
        "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                                        "code": "FOLLOWUP", "display": "A follow up visit from a previous appointment"}]},
        "priority": 5, "description": "Maintenance infusion", "start": start, "end": end,
        "created": "2026-11-20", "comment": "Further expand on the results of the MRI",
        "participant": [
            {"actor": {"reference": f"Patient/{patient}", "display": "Test Patient"}, "required": "required",
             "status": "needs-action"},
            {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                   "code": "ATND"}]}],
             "actor": {"reference": "Practitioner/example", "display": "Dr Adam Careful"},
             "required": "required", "status": "accepted"},
            {"actor": {"reference": "Location/1", "display": "South Wing, second floor"}, "required": "required",
             "status": "accepted"}],
    }


def booking(loaded: Any, appointments: list[dict[str, Any]], given: list[dict[str, Any]]) -> dict[str, Any]:
    body = request_for(loaded, SERVICE["appointment-book"], {"patient": ADULT, "order": None, "given": given}, NOW)
    body["context"]["appointments"] = {"resourceType": "Bundle", "type": "collection",
                                       "entry": [{"fullUrl": f"urn:uuid:{a['id']}", "resource": a}
                                                 for a in appointments]}
    return body


def test_hl7_shaped_appointment_is_recognised_by_its_service_type(loaded: Any) -> None:
    start = (NOW + dt.timedelta(days=2)).isoformat()
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [hl7_appointment("hl7-1", start)],
                                                          maintenance("-1d")))
    assert "TIM-01" in rules(outcome)
    assert outcome.trace()["anchors"] == [{"kind": "appointment", "at": start, "ref": "Appointment/hl7-1"}]


def test_booked_and_non_session_appointments_are_context_not_sessions(loaded: Any) -> None:
    start = (NOW + dt.timedelta(days=2)).isoformat()
    already = {**hl7_appointment("old", start), "status": "booked"}
    dental = {**hl7_appointment("dental", start), "serviceType": [{"text": "Dental check"}], "appointmentType": None}
    dental = {k: v for k, v in dental.items() if v is not None}
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [already, dental], maintenance("-1d")))
    # No session is checked; on a protocol course the unrecognised proposed one is said (DQ-07), not all clear.
    assert rules(outcome) == {"DQ-07"}
    assert card(outcome, "DQ-07")["extension"]["protocol-engine"]["evidence"] == ["Appointment/dental"]
    assert outcome.trace()["anchors"][0]["kind"] == "now"
    alone = call(loaded, "appointment-book", {}, booking(loaded, [already], maintenance("-1d")))
    assert alone.cards == [] and alone.trace().get("skipped")
    no_course = call(loaded, "appointment-book", {}, booking(loaded, [dental], []))
    assert no_course.cards == []


def test_a_proposed_session_without_start_is_a_data_quality_card_not_a_guess(loaded: Any) -> None:
    appt = hl7_appointment("no-start", (NOW + dt.timedelta(days=2)).isoformat())
    del appt["start"], appt["end"]
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [appt], maintenance("-1d")))
    assert rules(outcome) == {"DQ-02"}
    assert "Appointment/no-start" in card(outcome, "DQ-02")["extension"]["protocol-engine"]["evidence"]


def test_each_session_is_judged_at_its_own_start_and_same_cards_merge(loaded: Any) -> None:
    soon, weekly_start, later = ((NOW + dt.timedelta(days=d)).isoformat() for d in (2, 6, 3))
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [
        hl7_appointment("soon", soon), hl7_appointment("weekly", weekly_start), hl7_appointment("later", later)],
        maintenance("-1d")))
    timing = [c for c in outcome.cards if c["extension"]["protocol-engine"]["rule"] in ("TIM-01", "TIM-02")]
    evidence = [c["extension"]["protocol-engine"]["evidence"] for c in timing]
    # soon: 3 days after the recorded dose; later: 1 day after soon; weekly: 3 days after later (planned doses).
    assert {"Appointment/soon", "Appointment/later", "Appointment/weekly"} <= {ref for e in evidence for ref in e}
    assert any("Appointment/later" in e and "Appointment/weekly" in e for e in evidence)
    # Without the series, each alone: weekly (7 days after the dose) is in time.
    alone = call(loaded, "appointment-book", {}, booking(loaded, [hl7_appointment("weekly", weekly_start)],
                                                         maintenance("-1d")))
    assert not rules(alone) & {"TIM-01", "TIM-02"}


def test_an_invalid_appointment_is_a_data_issue_and_the_valid_session_is_still_checked(loaded: Any) -> None:
    good = hl7_appointment("good", (NOW + dt.timedelta(days=2)).isoformat())
    bad = {**hl7_appointment("bad", (NOW + dt.timedelta(days=2)).isoformat()), "start": "next tuesday"}
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [good, bad], maintenance("-1d")))
    assert {"TIM-01", "DQ-02"} <= rules(outcome)


# -- encounter-start as EHRs send it -----------------------------------------------------
def hl7_encounter(encounter_id: str, start: str | None) -> dict[str, Any]:
    """Shaped like HL7's Encounter/example (status, class, subject, period), an ambulatory session."""
    res: dict[str, Any] = {
        "resourceType": "Encounter", "id": encounter_id, "status": "in-progress",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Encounter</div>"},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                  "display": "ambulatory"},
        "subject": {"reference": "Patient/test-patient"},
        "participant": [{"individual": {"reference": "Practitioner/example"}}],
        "serviceProvider": {"reference": "Organization/2"}}
    if start:
        res["period"] = {"start": start}
    return res


def test_encounter_period_start_is_the_moment_of_the_session(loaded: Any) -> None:
    body = request_for(loaded, SERVICE["encounter-start"], {"patient": ADULT, "order": None,
                                                            "given": maintenance("-2d")}, NOW)
    started = (NOW - dt.timedelta(hours=1)).isoformat()
    body["prefetch"]["encounter"] = hl7_encounter(body["context"]["encounterId"], started)
    outcome = call(loaded, "encounter-start", {}, body)
    assert outcome.trace()["anchors"][0] == {"kind": "encounter", "at": started,
                                           "ref": f"Encounter/{body['context']['encounterId']}"}
    course = next(f for f in outcome.facts if f["t"] == "course")
    assert course["since_last"] == pytest.approx(47.0)


@pytest.fixture()
def fhir_with_encounter(loaded: Any) -> Iterator[tuple[FhirServer, dict[str, Any]]]:
    body = request_for(loaded, SERVICE["encounter-start"], {"patient": ADULT, "order": None,
                                                            "given": maintenance("-7d")}, NOW)
    encounter = body["prefetch"].pop("encounter")
    server = FhirServer([encounter])
    yield server, body
    server.close()


def test_a_missing_encounter_is_fetched_from_the_fhir_server(
        loaded: Any, fhir_with_encounter: tuple[FhirServer, dict[str, Any]]) -> None:
    from adapters.fhir.client import HttpxFhirClient

    server, body = fhir_with_encounter
    body["fhirServer"] = server.base
    # The stages as the HTTP view calls them, with a real client and a deadline (pipeline.run has no client).
    prepared = prepare(loaded.runtimes[SERVICE["encounter-start"]], body)
    gathered = gather(prepared, HttpxFhirClient(), NOW, 2.0, time.monotonic() + 3.0)
    outcome = evaluate(prepared, gathered, NOW, "test")
    assert [r["path"] for r in server.requests] == [f"/fhir/Encounter/{body['context']['encounterId']}"]
    assert outcome.trace()["sources"]["encounter"] == "fetched" and "MON-06" in rules(outcome)


def test_discovery_declares_the_encounter_prefetch_for_encounter_start(loaded: Any) -> None:
    templates = loaded.runtimes[SERVICE["encounter-start"]].templates
    assert templates["encounter"] == "Encounter/{{context.encounterId}}"
    assert "encounter" not in loaded.runtimes[SERVICE["patient-view"]].templates


# -- metamorphic: an unrelated active medicine changes nothing, at any hook ---------------
CHARTS = {
    "maintenance, due": maintenance("-7d"),
    "maintenance, too soon": maintenance("-2d"),
    "induction": [{"administration": KETAMINE, "at": at, "route": IV} for at in ("-5d", "-3d")],
    "psychosis": [*maintenance("-6d"), {"condition": "ICD10#F20.9 Schizophrenia, unspecified"}],
    "hypertensive": [*maintenance("-7d"), {"observation": "LOINC#85354-9", "at": "-10m", "components": {
        "LOINC#8480-6": "186 mm[Hg]", "LOINC#8462-4": "104 mm[Hg]"}}],
    "esketamine": [{"administration": ESKETAMINE, "at": at} for at in ("-8d", "-4d", "-1d")],
}
UNRELATED = [
    SERTRALINE,
    {"medication": "RXNORM#197361 amlodipine 5 MG Oral Tablet"},
    {"medication": "RXNORM#617314 atorvastatin 10 MG Oral Tablet", "kind": "statement"},
    {"resource": {"resourceType": "MedicationRequest", "id": "free-text", "status": "active", "intent": "order",
                  "subject": {"reference": "Patient/test-patient"},
                  "medicationCodeableConcept": {"text": "Omeprazole 20 mg oral capsule, once daily"},
                  "dosageInstruction": [{"route": {"text": "oral"}}]}},
]


def _cards(outcome: Decision) -> list[tuple[str, str, str]]:
    return sorted((c["extension"]["protocol-engine"]["rule"], c["indicator"], c["summary"]) for c in outcome.cards)


@pytest.mark.parametrize("hook", list(SERVICE))
@pytest.mark.parametrize("chart", list(CHARTS))
def test_an_unrelated_active_medicine_does_not_change_the_cards(loaded: Any, hook: str, chart: str) -> None:
    order = {"medication": KETAMINE, "dose": "35 mg", "route": IV} if hook.startswith("order") else None
    if chart == "esketamine" and order:
        order = {"medication": ESKETAMINE, "dose": "56 mg"}
    case = {"order": order, "given": CHARTS[chart], "appointments": [{"start": "+3d", "type": "Ketamine session"}]}
    if hook != "appointment-book":
        del case["appointments"]
    base = _cards(call(loaded, hook, copy.deepcopy(case)))
    for extra in UNRELATED:
        changed = _cards(call(loaded, hook, {**copy.deepcopy(case), "given": [*CHARTS[chart], extra]}))
        assert changed == base, (hook, chart, extra)


# -- the anchor declaration is checked at load --------------------------------------------
@pytest.mark.parametrize("old, new, message", [
    ("    anchor: now ", "    anchor: appointment ", "a patient-view service evaluates against now, not 'appointment'"),
    ("    anchor: draft-order   # every", "    anchor: now   # every",
     "a order-sign service evaluates against draft-order, not 'now'"),
    ("    anchor: encounter ", "    anchor: encounter\n    sessions: treatment-session\n   ",
     "'sessions' only applies to the appointment anchor"),
    ("    sessions: treatment-session ", "    sessions: treatment-sessions ",
     "uses value set 'treatment-sessions', which is not defined"),
])
def test_a_bad_anchor_declaration_is_refused_at_load(tmp_path: Any, old: str, new: str, message: str) -> None:
    import re
    import shutil

    from click.testing import CliRunner
    from conftest import ROOT

    from protocol_engine.cli import main

    pack = tmp_path / "rules" / "ketamine"
    shutil.copytree(ROOT / "rules" / "ketamine", pack)
    protocol = pack / "protocol.yaml"
    assert old in protocol.read_text(), old
    protocol.write_text(protocol.read_text().replace(old, new, 1))
    result = CliRunner().invoke(main, ["validate", "--no-git", str(pack)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.output, result.output
    assert re.search(r"protocol\.yaml:\d+:\d+: error\[", result.output)


# -- new-user probe findings (fix15) -----------------------------------------------------
def test_another_patients_proposed_appointment_is_set_aside_not_evaluated(loaded: Any) -> None:
    """Probe 29/44: an Appointment whose participant Patient is someone else gets DQ-05, never TIM-01."""
    tomorrow, own = ((NOW + dt.timedelta(days=d)).isoformat() for d in (1, 10))
    other = hl7_appointment("other", tomorrow, patient="someone-else")
    alone = call(loaded, "appointment-book", {}, booking(loaded, [other], maintenance("-5d")))
    assert rules(alone) == {"DQ-05"}
    assert "Appointment/other" in card(alone, "DQ-05")["extension"]["protocol-engine"]["evidence"]
    assert alone.trace()["anchors"][0]["kind"] == "now"
    both = call(loaded, "appointment-book", {}, booking(loaded, [hl7_appointment("own", own), other],
                                                        maintenance("-5d")))
    assert "TIM-01" not in rules(both) and "DQ-05" in rules(both)
    assert [a.get("ref") for a in both.trace()["anchors"]] == ["Appointment/own"]
    assert not any("Appointment/other" in c["extension"]["protocol-engine"]["evidence"]
                   for c in both.cards if c["extension"]["protocol-engine"]["rule"] != "DQ-05")


def test_encounter_start_reading_lookbacks_end_at_now_not_at_period_start(loaded: Any) -> None:
    """Probe 54 (decided): the dose follows the encounter start, so the 24 h pre-dose BP window ends at now.
    A BP 23 h before period.start but 25 h before now is stale (MON-01); the course is still anchored."""
    bp = {"observation": "LOINC#85354-9", "at": "-25h", "id": "bp-old",
          "components": {"LOINC#8480-6": "128 mm[Hg]", "LOINC#8462-4": "78 mm[Hg]"}}
    case = {"order": None, "given": [*maintenance("-7d"), bp], "encounter": {"start": "-2h"}}
    outcome = call(loaded, "encounter-start", case)
    assert "MON-01" in rules(outcome)
    course = next(f for f in outcome.facts if f["t"] == "course")
    assert course["since_last"] == pytest.approx(7 * 24 - 2)
    fresh = call(loaded, "encounter-start", {**case, "given": [*maintenance("-7d"), {**bp, "at": "-1h"}]})
    assert "MON-01" not in rules(fresh)


def test_a_series_booked_at_once_is_checked_session_against_session(loaded: Any) -> None:
    """Probe 31/45: earlier proposed sessions of the same Bundle are planned doses for the later ones."""
    first, second = ((NOW + dt.timedelta(days=d)).isoformat() for d in (1, 5))
    # Bundle order reversed on purpose: the series is ordered by start.
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [
        hl7_appointment("second", second), hl7_appointment("first", first)], maintenance("-7d")))
    tim = card(outcome, "TIM-01")
    evidence = tim["extension"]["protocol-engine"]["evidence"]
    assert "Appointment/second" in evidence and "Appointment/first" in evidence
    assert "proposed session" in tim["detail"] and "(Appointment/first) booked in this same request" in tim["detail"]
    assert "4 days before the booked session" in tim["summary"]
    assert len([c for c in outcome.cards if c["extension"]["protocol-engine"]["rule"] == "TIM-01"]) == 1
    # Each alone (one proposed session) is judged exactly as before, against the recorded doses only.
    for appt in (hl7_appointment("first", first), hl7_appointment("second", second)):
        alone = call(loaded, "appointment-book", {}, booking(loaded, [appt], maintenance("-7d")))
        assert "TIM-01" not in rules(alone)


def test_two_sessions_booked_the_same_day_are_a_probable_duplicate(loaded: Any) -> None:
    morning, evening = ((NOW + dt.timedelta(days=1, hours=h)).isoformat() for h in (0, 6))
    outcome = call(loaded, "appointment-book", {}, booking(loaded, [
        hl7_appointment("am", morning), hl7_appointment("pm", evening)], maintenance("-7d")))
    fired = {c["extension"]["protocol-engine"]["rule"] for c in outcome.cards
             if "Appointment/pm" in c["extension"]["protocol-engine"]["evidence"]}
    assert fired & {"TIM-01", "TIM-02"}
    assert not any("Appointment/am" in c["extension"]["protocol-engine"]["evidence"]
                   and "Appointment/pm" not in c["extension"]["protocol-engine"]["evidence"] for c in outcome.cards)
