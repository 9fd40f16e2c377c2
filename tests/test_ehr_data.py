"""Real EHR data shapes (issue 16 items 1-3, 8): patient identity, medication resolution through every kind of
reference (and a real loopback FHIR server), never-silent draft orders, and Bundle hygiene.

The base payload is the captured sandbox request (shared/cds-hooks/captured), not the project's shorthand; each
test rewrites it the way another EHR would send the same facts.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for
from fhir_server import FhirServer

from adapters.fhir import identity
from adapters.fhir.medications import MedicationIndex

SIGN = "/cds-services/ketamine-order-sign"
SELECT = "/cds-services/ketamine-order-select"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CAPTURED = Path(__file__).resolve().parent / "data" / "captured-order-sign-severe-hypertension.json"


def _rules(response: Any) -> list[str]:
    assert response.status_code == 200, response.json
    return sorted(c["extension"]["protocol-engine"]["rule"] for c in response.json["cards"])


def _card(response: Any, rule: str) -> dict[str, Any]:
    return next(c for c in response.json["cards"] if c["extension"]["protocol-engine"]["rule"] == rule)


def _severe(loaded: Any, order: dict[str, Any] | None = None, **case: Any) -> dict[str, Any]:
    """Order-sign for a 40-year-old with BP 190/110 (shorthand for the chart, raw FHIR for what is tested)."""
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": order or KETAMINE_ORDER,
                                                       "given": [bp(190, 110, id="bp-high")], **case})
    return body


def _draft(body: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = body["context"]["draftOrders"]["entry"][0]["resource"]
    return resource


def _reference(body: dict[str, Any], reference: str, medication: dict[str, Any] | None = None,
               full_url: str | None = None) -> None:
    """Turn the draft order's codeable concept into a medicationReference (optionally adding the Medication)."""
    order = _draft(body)
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": reference}
    if medication is not None:
        entry: dict[str, Any] = {"resource": medication}
        if full_url:
            entry["fullUrl"] = full_url
        body["context"]["draftOrders"]["entry"].append(entry)


KETAMINE_SCD = {"resourceType": "Medication", "id": "ket-50",
                "code": {"coding": [{"system": RXNORM, "code": "238082",
                                     "display": "ketamine 50 MG/ML Injectable Solution"}]}}


# -- identity -------------------------------------------------------------------------------
@pytest.mark.parametrize(("reference", "owner"), [
    ("Patient/p1", "p1"),
    ("https://fhir.epic.example/api/FHIR/R4/Patient/p1", "p1"),
    ("https://fhir.cerner.example/r4/tenant/Patient/p1/_history/3", "p1"),
    ("urn:uuid:aa", "p1"),
    ("urn:uuid:bb", None),
    ("Group/p1", None),
    ("Patient?identifier=123", None),
    ("#p1", None),
])
def test_a_reference_names_a_patient_only_when_it_resolves_to_one(reference: str, owner: str | None) -> None:
    assert identity.referenced_patient({"reference": reference}, {"urn:uuid:aa": "p1"}) == owner


def test_identifier_only_and_display_only_subjects_are_not_the_patient() -> None:
    for subject in ({"identifier": {"value": "MRN1"}}, {"display": "Jane Doe"}, "Patient/p1", None):
        raw = {"resourceType": "Condition", "id": "c", "subject": subject}
        assert identity.foreign_reason(raw, "p1", {}) is not None
    assert identity.foreign_reason({"resourceType": "Patient", "id": "p1"}, "p1", {}) is None
    assert identity.foreign_reason({"resourceType": "Medication", "id": "m"}, "p1", {}) is None


def test_another_patients_newer_normal_bp_in_a_vendor_shape_does_not_hide_190_110(client: Any, loaded: Any) -> None:
    body = _severe(loaded)
    other = copy.deepcopy(body["prefetch"]["observations"]["entry"][0]["resource"])
    other["id"] = "bp-other"
    other["subject"] = {"reference": "https://fhir.example.org/r4/Patient/not-this-one"}
    other["effectiveDateTime"] = dt.datetime.now(dt.UTC).isoformat()
    for component, value in zip(other["component"], (118, 74), strict=True):
        component["valueQuantity"]["value"] = value
    body["prefetch"]["observations"]["entry"].append({"fullUrl": "https://fhir.example.org/r4/Observation/bp-other",
                                                      "resource": other})
    response = client.post(SIGN, json=body)
    assert "CI-05" in _rules(response)
    assert "Observation/bp-other" in _card(response, "DQ-05")["detail"]
    assert "not-this-one" not in json.dumps(response.json), "the card names the record, never the other patient"


def test_a_synthea_chart_whose_subjects_are_urn_uuid_of_the_context_patient_is_this_patients(client: Any,
                                                                                            loaded: Any) -> None:
    """Probe 140: every subject is `urn:uuid:<context.patientId>` and no Bundle gives the Patient a fullUrl."""
    body = _severe(loaded)
    pid = body["context"]["patientId"]
    for key, value in body["prefetch"].items():
        for entry in (value or {}).get("entry") or () if key != "patient" else ():
            resource = entry["resource"]
            for element in ("subject", "patient"):
                if element in resource:
                    resource[element] = {"reference": f"urn:uuid:{pid}"}
            entry["fullUrl"] = f"urn:uuid:{resource.get('id', 'x')}-full"
    _draft(body)["subject"] = {"reference": f"urn:uuid:{pid}"}
    response = client.post(SIGN, json=body)
    assert "CI-05" in _rules(response) and "DQ-05" not in _rules(response)
    assert identity.foreign_reason({"resourceType": "Condition", "subject": {"reference": "urn:uuid:other"}},
                                   pid, {}) is not None
    bound = {f"urn:uuid:{pid}": "someone-else"}  # a Bundle Patient entry owns that fullUrl: it decides
    assert identity.foreign_reason({"resourceType": "Condition", "subject": {"reference": f"urn:uuid:{pid}"}},
                                   pid, bound) is not None


def test_a_draft_order_for_another_patient_is_set_aside_and_named(client: Any, loaded: Any) -> None:
    body = _severe(loaded)
    _draft(body)["subject"] = {"reference": "Patient/someone-else"}
    response = client.post(SIGN, json=body)
    assert _rules(response) == ["DQ-05", "DQ-06"]
    assert "not for this patient" in _card(response, "DQ-06")["detail"]


# -- medication resolution ------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["contained", "bundle-relative", "bundle-absolute", "bundle-urn"])
def test_every_reference_shape_of_the_draft_order_identifies_ketamine(client: Any, loaded: Any, shape: str) -> None:
    body = _severe(loaded)
    medication = copy.deepcopy(KETAMINE_SCD)
    if shape == "contained":
        _reference(body, "#ket-50")
        _draft(body)["contained"] = [medication]
    elif shape == "bundle-relative":
        _reference(body, "Medication/ket-50", medication)
    elif shape == "bundle-absolute":
        url = "https://fhir.example.org/r4/Medication/ket-50"
        _reference(body, url, medication, url)
    else:
        medication.pop("id")
        _reference(body, "urn:uuid:6f1d2a8e-0c52-4b8e-9d1a-7e3c2b1a0f99", medication,
                   "urn:uuid:6f1d2a8e-0c52-4b8e-9d1a-7e3c2b1a0f99")
    rules = _rules(client.post(SIGN, json=body))
    assert "CI-05" in rules and "DQ-06" not in rules


def test_a_medication_known_only_by_ingredient_is_identified(client: Any, loaded: Any) -> None:
    body = _severe(loaded)
    _reference(body, "#compounded")
    _draft(body)["contained"] = [{"resourceType": "Medication", "id": "compounded",
                                  "code": {"text": "Compounded infusion, pharmacy prepared"},
                                  "ingredient": [{"itemCodeableConcept": {"coding": [
                                      {"system": RXNORM, "code": "6130", "display": "ketamine"}]}},
                                                 {"itemCodeableConcept": {"text": "sodium chloride 0.9%"}}]}]
    rules = _rules(client.post(SIGN, json=body))
    assert "CI-05" in rules and "DQ-06" not in rules


def test_product_code_wins_over_text(loaded: Any) -> None:
    """An esketamine product whose free text says 'ketamine' is esketamine (product code first)."""
    from protocol_engine.core.records import Concept

    deriver = loaded.runtimes["ketamine-order-sign"].pack.deriver
    spravato = Concept(((RXNORM, "2201625", None),), "ketamine-class nasal spray")
    assert deriver.drug_of(spravato) == "esketamine"
    by_ingredient = Concept((("http://example.org/local", "X1", None),), "ketamine",
                            (Concept(((RXNORM, "2201625", None),)),))
    assert deriver.drug_of(by_ingredient) == "esketamine"


def test_an_included_medication_in_a_prefetch_searchset_is_used(client: Any, loaded: Any) -> None:
    """A MedicationStatement whose drug is a Medication included in the searchset (`search.mode: include`)."""
    body = _severe(loaded)
    key = "medicationStatements" if "medicationStatements" in body["prefetch"] else "medicationRequests"
    kind = "MedicationStatement" if key == "medicationStatements" else "MedicationRequest"
    statement: dict[str, Any] = {"resourceType": kind, "id": "benzo", "status": "active",
                                 "subject": {"reference": "Patient/test-patient"},
                                 "medicationReference": {"reference": "Medication/ativan-1"}}
    if kind == "MedicationRequest":
        statement["intent"] = "order"
    body["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": f"https://fhir.example.org/r4/{kind}/benzo", "resource": statement, "search": {"mode": "match"}},
        {"fullUrl": "https://fhir.example.org/r4/Medication/ativan-1", "search": {"mode": "include"},
         "resource": {"resourceType": "Medication", "id": "ativan-1", "code": {"text": "Ativan 1 mg tablet"},
                      "ingredient": [{"itemCodeableConcept": {"coding": [
                          {"system": RXNORM, "code": "6470", "display": "lorazepam"}]}}]}}]}
    assert "DDI-01" in _rules(client.post(SIGN, json=body))


@pytest.fixture()
def medication_server(app: Any) -> Iterator[FhirServer]:
    server = FhirServer([copy.deepcopy(KETAMINE_SCD)])
    app.extensions["protocol_engine"]["fhir_servers"] = (server.base,)  # PROTOCOL_ENGINE_FHIR_SERVERS (issue 17)
    yield server
    server.close()


def test_an_unresolved_reference_is_read_from_fhir_server_with_the_token(
        client: Any, loaded: Any, medication_server: FhirServer) -> None:
    body = _severe(loaded)
    _reference(body, "Medication/ket-50")
    without = _rules(client.post(SIGN, json=body))
    assert "DQ-06" in without and "CI-05" not in without, "no fhirServer: named, never a silent []"
    body.update(fhirServer=medication_server.base, fhirAuthorization={
        "access_token": "med-token", "token_type": "Bearer", "expires_in": 300, "scope": "user/Medication.read",
        "subject": "svc"})
    rules = _rules(client.post(SIGN, json=body))
    assert "CI-05" in rules and "DQ-06" not in rules
    assert [r["path"] for r in medication_server.requests] == ["/fhir/Medication/ket-50"]
    assert medication_server.requests[0]["authorization"] == "Bearer med-token"


def test_an_absolute_reference_on_fhir_server_is_read_and_one_elsewhere_is_not(
        client: Any, loaded: Any, medication_server: FhirServer) -> None:
    body = _severe(loaded)
    body["fhirServer"] = medication_server.base
    _reference(body, f"{medication_server.base}/Medication/ket-50")
    assert "CI-05" in _rules(client.post(SIGN, json=body))
    body = _severe(loaded)
    body["fhirServer"] = medication_server.base
    _reference(body, "https://untrusted.example.org/fhir/Medication/ket-50")
    medication_server.requests.clear()
    rules = _rules(client.post(SIGN, json=body))
    assert "DQ-06" in rules and medication_server.requests == []


@pytest.mark.parametrize("mode", ["404", "500", "garbage", "slow"])
def test_a_failed_medication_read_is_a_named_order_not_a_412_or_silence(
        client: Any, loaded: Any, medication_server: FhirServer, mode: str) -> None:
    medication_server.mode = mode
    body = _severe(loaded)
    body["fhirServer"] = medication_server.base
    _reference(body, "Medication/ket-50")
    response = client.post(SIGN, json=body)
    assert "DQ-06" in _rules(response)
    assert "MedicationRequest/" in _card(response, "DQ-06")["detail"]


# -- never silent ---------------------------------------------------------------------------
def test_a_non_protocol_order_is_still_answered_early_without_a_fetch(client: Any, loaded: Any) -> None:
    body = _severe(loaded, order={"medication": "RXNORM#36567 simvastatin", "dose": "20 mg"})
    del body["prefetch"]
    assert client.post(SIGN, json=body).json == {"cards": []}


def test_an_unidentifiable_order_is_not_answered_early(client: Any, loaded: Any) -> None:
    body = _severe(loaded)
    _reference(body, "Medication/nowhere")
    response = client.post(SIGN, json=body)
    assert _rules(response) == ["DQ-06"]
    assert "not known" in _card(response, "DQ-06")["detail"]


def test_order_select_only_judges_the_selected_order(client: Any, loaded: Any) -> None:
    body = request_for(loaded, "ketamine-order-select", {
        "patient": ADULT, "given": [bp(190, 110)],
        "orders": [{"medication": "RXNORM#36567 simvastatin", "id": "statin"}, {**KETAMINE_ORDER, "id": "ket"}],
        "selections": ["MedicationRequest/statin"]})
    body["context"]["draftOrders"]["entry"][1]["resource"].pop("intent")  # invalid, but not selected
    assert client.post(SELECT, json=body).json == {"cards": []}
    body["context"]["selections"] = ["MedicationRequest/ket"]
    assert {"CI-05", "DQ-06"} <= set(_rules(client.post(SELECT, json=body)))


# -- Bundles ---------------------------------------------------------------------------------
def test_an_error_outcome_entry_makes_the_key_incomplete(app: Any, client: Any, loaded: Any) -> None:
    body = _severe(loaded, given=[bp(190, 110), {"condition": "SNOMED#58214004 Schizophrenia", "id": "scz"}])
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "too-costly"}]}
    body["prefetch"]["conditions"]["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    response = client.post(SIGN, json=body)
    assert response.status_code == 412 and response.json["issue"][0]["expression"] == ["conditions"]
    server = FhirServer([e["resource"] for e in body["prefetch"]["conditions"]["entry"][:-1]])
    app.extensions["protocol_engine"]["fhir_servers"] = (server.base,)
    try:
        body["fhirServer"] = server.base
        assert "CI-10" in _rules(client.post(SIGN, json=body))
        assert [r["path"].split("?")[0] for r in server.requests] == ["/fhir/Condition"]
    finally:
        server.close()


def test_a_warning_outcome_entry_leaves_the_key_whole(client: Any, loaded: Any) -> None:
    body = _severe(loaded)
    warning = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "informational"}]}
    body["prefetch"]["conditions"]["entry"].append({"resource": warning, "search": {"mode": "outcome"}})
    assert "CI-05" in _rules(client.post(SIGN, json=body))


@pytest.mark.parametrize("meta", [
    ({"versionId": "1"}, {"versionId": "2"}),
    ({"versionId": "9"}, {"versionId": "10"}),  # numbers, not strings
    ({"versionId": "b65c5516", "lastUpdated": "2026-11-20T08:00:00Z"},
     {"versionId": "0a1f", "lastUpdated": "2026-11-20T09:00:00+01:00Z".replace("+01:00Z", "+00:30")}),
])
@pytest.mark.parametrize("newest_first", [False, True])
def test_duplicate_ids_keep_the_newest_version(client: Any, loaded: Any, meta: tuple[dict[str, str], ...],
                                               newest_first: bool) -> None:
    """A BP entered as 190/110 and corrected to 120/80 under the same id: the correction governs."""
    body = _severe(loaded)
    entries = body["prefetch"]["observations"]["entry"]
    old = entries[0]["resource"]
    new = copy.deepcopy(old)
    old["meta"], new["meta"] = meta
    for component, value in zip(new["component"], (120, 80), strict=True):
        component["valueQuantity"]["value"] = value
    entries.insert(0 if newest_first else 1, {"resource": new})
    assert "CI-05" not in _rules(client.post(SIGN, json=body))


def test_patient_null_is_no_birth_date(client: Any, loaded: Any) -> None:
    body = _severe(loaded)
    body["prefetch"]["patient"] = None
    rules = _rules(client.post(SIGN, json=body))
    assert "DQ-03" in rules and "CI-05" in rules


# -- the captured sandbox request, rewritten -------------------------------------------------
def _redated(node: Any, delta: dt.timedelta) -> Any:
    """Every dateTime moved by `delta` (the capture is absolute-dated; its readings must stay recent)."""
    if isinstance(node, dict):
        return {k: _redated(v, delta) for k, v in node.items()}
    if isinstance(node, list):
        return [_redated(v, delta) for v in node]
    if isinstance(node, str) and len(node) > 10 and node[4:5] == "-" and node[10:11] == "T":
        try:
            moved = dt.datetime.fromisoformat(node.replace("Z", "+00:00")) + delta
        except ValueError:
            return node
        return moved.isoformat()
    return node


def _captured() -> dict[str, Any]:
    """The sandbox's order-sign request (captured 2026-11-30 ~07:40 UTC), re-dated to now, without fhirServer."""
    data: dict[str, Any] = json.loads(CAPTURED.read_text())
    data.pop("fhirServer", None)
    delta = dt.datetime.now(dt.UTC) - dt.datetime(2026, 11, 30, 7, 45, tzinfo=dt.UTC)
    redated: dict[str, Any] = _redated(data, delta)
    return redated


@pytest.mark.parametrize("shape", ["as-captured", "contained", "urn", "included", "absolute-subjects"])
def test_captured_request_in_other_shapes_gives_the_same_cards(client: Any, shape: str) -> None:
    body = _captured()
    baseline = _rules(client.post(SIGN, json=_captured()))
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    medication = {"resourceType": "Medication", "id": "m1", "code": order["medicationCodeableConcept"]}
    if shape == "contained":
        order["contained"] = [medication]
        order["medicationReference"] = {"reference": "#m1"}
        del order["medicationCodeableConcept"]
    elif shape == "urn":
        body["context"]["draftOrders"]["entry"].append({"fullUrl": "urn:uuid:1b2c", "resource": medication})
        order["medicationReference"] = {"reference": "urn:uuid:1b2c"}
        del order["medicationCodeableConcept"]
    elif shape == "included":
        body["prefetch"]["medicationRequests"]["entry"] = body["prefetch"]["medicationRequests"].get("entry", []) + [
            {"resource": medication, "search": {"mode": "include"}}]
        order["medicationReference"] = {"reference": "Medication/m1"}
        del order["medicationCodeableConcept"]
    elif shape == "absolute-subjects":
        pid = body["context"]["patientId"]
        for value in body["prefetch"].values():
            for entry in (value or {}).get("entry", []) if isinstance(value, dict) else []:
                resource = entry["resource"]
                for element in ("subject", "patient"):
                    if element in resource:
                        resource[element] = {"reference": f"https://ehr.example.org/fhir/Patient/{pid}"}
    assert "CI-05" in baseline
    assert _rules(client.post(SIGN, json=body)) == baseline


def test_medication_index_resolves_history_and_server_relative_names() -> None:
    index = MedicationIndex("https://ehr.example.org/fhir/")
    index.add_payloads([{"resourceType": "Bundle", "entry": [{"resource": copy.deepcopy(KETAMINE_SCD)}]}])
    for ref in ("Medication/ket-50", "Medication/ket-50/_history/2", "https://ehr.example.org/fhir/Medication/ket-50"):
        assert index.lookup(ref) is not None, ref
    assert index.lookup("https://elsewhere.example.org/fhir/Medication/ket-50") is None
    assert index.fetchable("Medication/x") == "Medication/x"
    assert index.fetchable("https://ehr.example.org/fhir/Medication/x/_history/1") == "Medication/x"
    assert index.fetchable("urn:uuid:1") is None and index.fetchable("#x") is None


def test_an_unresolved_chart_medication_is_reported_only_when_it_may_matter(client: Any, loaded: Any) -> None:
    """No fhirServer: a statement whose reference display names a benzodiazepine is used and reported (DQ-02);
    one whose display names a statin is out of every value set and adds nothing; one with no display is reported."""
    def with_statement(display: str | None) -> list[str]:
        body = _severe(loaded)
        reference: dict[str, Any] = {"reference": "Medication/elsewhere"}
        if display:
            reference["display"] = display
        key = "medicationStatements" if "medicationStatements" in body["prefetch"] else "medicationRequests"
        statement = {"resourceType": "MedicationStatement" if key == "medicationStatements" else "MedicationRequest",
                     "id": "home-med", "status": "active", "intent": "order",
                     "subject": {"reference": "Patient/test-patient"}, "medicationReference": reference}
        if key == "medicationStatements":
            statement.pop("intent")
        body["prefetch"][key]["entry"].append({"resource": statement})
        return _rules(client.post(SIGN, json=body))

    assert {"DDI-01", "DQ-02"} <= set(with_statement("Lorazepam 1 mg tablet"))
    assert "DQ-02" not in with_statement("Atorvastatin 20 mg tablet")
    assert "DQ-02" in with_statement(None)


# -- card labels (issue 16 item 4): no bare codes, no invented midnight ---------------------------------------------
def test_a_code_without_a_display_is_labelled_from_the_value_set_or_its_system(loaded: Any) -> None:
    from protocol_engine.core.records import Concept

    index = next(iter(loaded.runtimes.values())).pack.index
    assert index.label(Concept(((RXNORM, "308048", None),))) == "308048 alprazolam 0.5 MG Oral Tablet"
    assert index.label(Concept((("urn:oid:2.16.840.1.113883.6.88", "206821", None),))) == (
        "206821 lorazepam 0.5 MG Oral Tablet [Ativan]")  # the OID is RxNorm; source marks are not shown
    assert index.label(Concept(((RXNORM, "99999999", None),))) == "RxNorm 99999999"
    assert index.label(Concept((("http://hl7.org/fhir/sid/ndc", "00009009004", None),))).startswith(
        "00009009004 Xanax (alprazolam) 1 mg tablet")
    assert index.label(Concept(((RXNORM, "6130", "ketamine"),))) == "6130 ketamine"  # a display sent is kept


@pytest.mark.parametrize(("value", "latest", "shown"), [
    ("2026-11-30", None, "today"),
    ("2026-11-29", None, "yesterday"),
    ("2012-09-17", None, "17 Sep 2012"),
    ("2026-08", None, "Aug 2026"),
    ("2009", None, "2009"),
    (dt.datetime(2012, 9, 17, tzinfo=dt.UTC), dt.datetime(2012, 9, 17, 23, 59, 59, 999999, tzinfo=dt.UTC),
     "17 Sep 2012"),
    (dt.datetime(2026, 8, 1, tzinfo=dt.UTC), dt.datetime(2026, 8, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
     "Aug 2026"),
    (dt.datetime(2026, 11, 30, 7, 13, tzinfo=dt.UTC), None, "today 07:13 UTC"),
    (dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.UTC), dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.UTC),
     "today 00:00 UTC"),  # a full timestamp at midnight is a time, shown as one
])
def test_a_date_only_time_is_shown_as_the_date(value: Any, latest: Any, shown: str) -> None:
    from protocol_engine.core import display

    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    assert display.when(value, now, latest=latest) == shown
