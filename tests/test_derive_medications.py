"""core/derive/medications.py: a medicine's protocol drug and route, and the condition, medication and allergy facts.

HL7's published MedicationRequest example (medrx0301: oxycodone, contained Medication, oral route) and small
hand-built records for the statuses (G6-G8, G11).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hl7_examples import NOW, chart_of, deriver, example

from protocol_engine.core.derive.medications import name_of
from protocol_engine.core.records import AllergyRecord, Chart, Concept, ConditionRecord, MedicationRecord
from protocol_engine.core.valuesets import SYSTEMS

RXNORM, SNOMED = SYSTEMS["RXNORM"], SYSTEMS["SNOMED"]
PHENELZINE = Concept(((RXNORM, "8123", "phenelzine"),))


def test_hl7_oxycodone_is_no_protocol_drug_but_its_route_and_name_are_read(loaded: Any) -> None:
    [order] = chart_of(example("medicationrequest0301")).medications
    medicines = deriver(loaded).medicines
    assert medicines.drug_of(order.medication) is None
    assert medicines.route_of(order.route) == "oral" and medicines.route_label("oral") == "oral"
    assert name_of(order.medication, medicines.index) == "Oral Form Oxycodone (product)"
    assert order.status == "completed" and list(medicines.medications(Chart(medications=[order]))) == []


def test_active_and_on_hold_medicines_are_facts_with_their_status(loaded: Any) -> None:
    chart = Chart(medications=[MedicationRecord("MedicationRequest/a", "request", PHENELZINE, "active"),
                               MedicationRecord("MedicationRequest/h", "request", PHENELZINE, "on-hold"),
                               MedicationRecord("MedicationRequest/s", "request", PHENELZINE, "stopped")])
    found = [(f["refs"][0], f["status"]) for f in deriver(loaded).medicines.medications(chart)
             if f["valueset"] == "maoi"]
    assert found == [("MedicationRequest/a", "active"), ("MedicationRequest/h", "on-hold")]


def test_conditions_refuted_future_and_uncoded(loaded: Any) -> None:
    psychosis = Concept(((SNOMED, "69322001", "Psychotic disorder"),))
    chart = Chart(conditions=[
        ConditionRecord("Condition/active", psychosis, "active", "confirmed", NOW - dt.timedelta(days=400)),
        ConditionRecord("Condition/refuted", psychosis, "active", "refuted", None),
        ConditionRecord("Condition/future", psychosis, None, None, NOW + dt.timedelta(days=2)),
        ConditionRecord("Condition/text", Concept((), "psychosis"), "active", None, None)])
    medicines = deriver(loaded).medicines
    facts = list(medicines.conditions(chart, NOW))
    assert {f["refs"][0] for f in facts} == {"Condition/active"}
    assert all(f["active"] and f["onset_ago"] == 400 * 24 for f in facts)
    [issue] = medicines.uncoded_conditions(chart)
    assert issue.ref == "Condition/text" and "no code (text only)" in issue.problem


def test_an_inactive_allergy_is_not_a_fact(loaded: Any) -> None:
    ketamine = Concept(((RXNORM, "6130", "ketamine"),))
    chart = Chart(allergies=[AllergyRecord("AllergyIntolerance/a", (ketamine,), "active", "confirmed"),
                             AllergyRecord("AllergyIntolerance/r", (ketamine,), "resolved", "confirmed")])
    facts = list(deriver(loaded).medicines.allergies(chart))
    assert facts and {f["refs"][0] for f in facts} == {"AllergyIntolerance/a"}
