"""The whole ketamine catalogue on all five hooks, the sample patients, and a second pack from files alone."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from protocol_engine.authoring.samples import sample_index, sample_request
from protocol_engine.hooks.pipeline import run

CATALOGUE = (
    [f"CI-{i:02d}" for i in range(1, 26)] + ["CI-08b", "CI-17b", "CI-18b", "CI-18c", "CI-19b"]
    + [f"MON-{i:02d}" for i in range(1, 13)] + ["DQ-01", "DQ-03"] + [f"DDI-{i:02d}" for i in range(1, 7)]
    + [f"DOS-{i:02d}" for i in range(1, 7)] + [f"TIM-{i:02d}" for i in range(1, 6)] + [f"RSP-{i:02d}" for i in range(1, 6)]
)
SERVICES = ["ketamine-order-select", "ketamine-order-sign", "ketamine-patient-view", "ketamine-appointment-book",
            "ketamine-encounter-start"]


def _cards(loaded: Any, name: str, service: str) -> list[dict[str, Any]]:
    hook = loaded.runtimes[service].service.hook
    now = dt.datetime.now(dt.UTC)
    body = sample_request(name, hook, now, loaded.runtimes[service].resource_types())
    assert body is not None
    return run(loaded.runtimes, loaded.packset.revision, service, json.loads(json.dumps(body)), now).cards


def _by_rule(cards: list[dict[str, Any]]) -> dict[str, str]:
    return {c["extension"]["protocol-engine"]["rule"]: c["indicator"] for c in cards}


def test_every_catalogue_id_is_a_rule_file(loaded: Any) -> None:
    ids = {r.id for r in loaded.packset.all_rules()}
    assert set(CATALOGUE) <= ids, sorted(set(CATALOGUE) - ids)
    for rule in loaded.packset.all_rules():
        assert rule.citation.label and rule.when_text and rule.then_text and rule.version.count(".") == 2


def test_five_services_each_answer_their_hook(loaded: Any) -> None:
    assert sorted(loaded.runtimes) == sorted(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_healthy_maintenance_patient_gets_no_warning_or_critical(loaded: Any, service: str) -> None:
    cards = _cards(loaded, "healthy-maintenance", service)
    assert all(c["indicator"] == "info" for c in cards), _by_rule(cards)


@pytest.mark.parametrize(("name", "rule", "indicator"), [
    ("severe-hypertension", "CI-05", "critical"),
    ("psychosis-history", "CI-11", "warning"),
    ("pregnancy", "CI-15", "critical"),
    ("too-soon", "TIM-01", "warning"),
    ("non-responder", "RSP-01", "warning"),
    ("esketamine", "MON-07", "info"),
])
def test_sample_patients_show_their_finding(loaded: Any, name: str, rule: str, indicator: str) -> None:
    assert _by_rule(_cards(loaded, name, "ketamine-order-sign")).get(rule) == indicator


def test_sample_index_lists_every_fixture() -> None:
    names = {s["name"] for s in sample_index()}
    assert {"healthy-maintenance", "severe-hypertension", "psychosis-history", "pregnancy", "too-soon",
            "non-responder", "esketamine"} <= names


def test_order_select_honours_selections(loaded: Any, client: Any) -> None:
    body = sample_request("severe-hypertension", "order-select", None, loaded.runtimes["ketamine-order-select"].resource_types())
    assert body is not None
    ketamine = body["context"]["draftOrders"]["entry"][0]["resource"]
    other = {"resourceType": "MedicationRequest", "id": "other", "status": "draft", "intent": "order",
             "subject": {"reference": "Patient/severe-hypertension"},
             "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                       "code": "36567", "display": "simvastatin"}]}}
    body["context"]["draftOrders"]["entry"].append({"resource": other})
    body["context"]["selections"] = ["MedicationRequest/other"]
    response = client.post("/cds-services/ketamine-order-select", json=body)
    assert response.status_code == 200 and response.json == {"cards": []}
    body["context"]["selections"] = [f"MedicationRequest/{ketamine['id']}"]
    response = client.post("/cds-services/ketamine-order-select", json=body)
    assert "CI-05" in _by_rule(response.json["cards"])


def test_order_sign_without_ketamine_is_empty_and_skips_fetch(loaded: Any, client: Any) -> None:
    body = sample_request("severe-hypertension", "order-sign", None, {})
    assert body is not None
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = {"text": "Atorvastatin"}
    response = client.post("/cds-services/ketamine-order-sign", json=body)  # no prefetch, no fhirServer
    assert response.status_code == 200 and response.json == {"cards": []}


def test_a_second_protocol_needs_files_alone(tmp_path: Path) -> None:
    from server import create_app

    packs = Path(__file__).resolve().parent / "packs"
    app = create_app({"auth": "disabled", "rules": str(packs), "database_url": f"sqlite:///{tmp_path}/pe.db",
                      "reload_interval": 0})
    client = app.test_client()
    services = {s["id"] for s in client.get("/cds-services").json["services"]}
    assert services == {"lithium-order-sign", "lithium-patient-view"}
    now = dt.datetime.now(dt.UTC)
    body = {"hook": "order-sign", "hookInstance": "li-1", "context": {
        "userId": "Practitioner/1", "patientId": "p1", "draftOrders": {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "li", "status": "draft", "intent": "order",
                          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "Lithium carbonate 300 mg"}}}]}},
        "prefetch": {"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"},
                     "medicationRequests": None, "medicationAdministrations": None,
                     "observations": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
                         "resourceType": "Observation", "id": "lvl", "status": "final",
                         "subject": {"reference": "Patient/p1"},
                         "code": {"coding": [{"system": "http://loinc.org", "code": "14334-7"}]},
                         "effectiveDateTime": (now - dt.timedelta(days=1)).isoformat(),
                         "valueQuantity": {"value": 1.6, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                                           "code": "mmol/L"}}}]}}}
    response = client.post("/cds-services/lithium-order-sign", json=body)
    assert response.status_code == 200, response.json
    assert [c["extension"]["protocol-engine"]["rule"] for c in response.json["cards"]] == ["LI-01"]
    app.extensions["protocol_engine"]["audit"].flush()
