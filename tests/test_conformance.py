"""CDS Hooks conformance checks DISC, SVC, REQ, PF and CORS (spec-and-peers section 4.6), each named."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for
from fhir_server import FhirServer, prefetch_resources

from adapters.fhir.hook_request import CONTEXT
from adapters.fhir.prefetch import ALLOWED_TOKENS
from protocol_engine.authoring.samples import sample_request

SIGN = "/cds-services/ketamine-order-sign"
HOOK_OF = {"ketamine-order-select": "order-select", "ketamine-order-sign": "order-sign",
           "ketamine-patient-view": "patient-view", "ketamine-appointment-book": "appointment-book",
           "ketamine-encounter-start": "encounter-start"}


def _no_empty(node: Any, where: str = "$") -> list[str]:
    problems = []
    if node is None or node == "" or node == [] or node == {}:
        problems.append(where)
    if isinstance(node, dict):
        for k, v in node.items():
            problems += _no_empty(v, f"{where}.{k}")
    if isinstance(node, list):
        for i, v in enumerate(node):
            problems += _no_empty(v, f"{where}[{i}]")
    return problems


def _severe_request(loaded: Any) -> dict[str, Any]:
    return request_for(loaded, "ketamine-order-sign", {
        "patient": ADULT, "order": KETAMINE_ORDER,
        "given": [bp(186, 108, id="bp-1"), {"condition": "ICD10#F20.9 <script>alert(1)</script> Schizophrenia"},
                  {"administration": "RXNORM#6130 ketamine", "at": "-10h"},
                  {"medication": "RXNORM#6470 lorazepam"}]})


# -- discovery --------------------------------------------------------------------------
def test_disc_1_discovery_is_an_object_with_services(client: Any) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert isinstance(response.json["services"], list) and len(response.json["services"]) == 5


def test_disc_2_services_have_required_fields_and_no_nulls(client: Any) -> None:
    for svc in client.get("/cds-services").json["services"]:
        for key in ("hook", "description", "id", "title", "prefetch"):
            assert isinstance(svc[key], (str, dict)) and svc[key], key
        assert not _no_empty(svc)


def test_disc_3_prefetch_tokens_are_context_tokens_of_the_hook(client: Any) -> None:
    for svc in client.get("/cds-services").json["services"]:
        allowed = {n for n, _, kind in CONTEXT[svc["hook"]] if kind in ("id", "ref")}
        for template in svc["prefetch"].values():
            for token in re.findall(r"\{\{\s*([^}]*?)\s*\}\}", template):
                assert token in ALLOWED_TOKENS or token.removeprefix("context.") in allowed, token
            assert "sort:desc" not in template and "Practitioner/{{context.userId}}" not in template


def test_disc_3_service_refuses_a_template_that_breaks_the_rules() -> None:
    from adapters.fhir.prefetch import template_problems

    assert template_problems("Observation?patient={{context.medication.id}}", {"patientId"})
    assert template_problems("Observation?patient={{Patient.id}}", {"patientId"})
    assert not template_problems("Observation?patient={{context.patientId}}", {"patientId"})


def test_disc_4_ids_unique_and_every_id_answers_post(client: Any, loaded: Any) -> None:
    services = client.get("/cds-services").json["services"]
    ids = [s["id"] for s in services]
    assert len(ids) == len(set(ids)) and all(re.match(r"^[a-z0-9-]+$", i) for i in ids)
    for svc in services:
        body = sample_request("healthy-maintenance", svc["hook"], None, loaded.runtimes[svc["id"]].resource_types())
        response = client.post(f"/cds-services/{svc['id']}", json=body)
        assert response.status_code == 200, (svc["id"], response.json)
        assert isinstance(response.json["cards"], list)


# -- service responses ------------------------------------------------------------------
def test_svc_1_every_hook_answers_and_no_guidance_is_empty_cards(client: Any, loaded: Any) -> None:
    for service, hook in HOOK_OF.items():
        body = sample_request("healthy-maintenance", hook, None, loaded.runtimes[service].resource_types())
        assert client.post(f"/cds-services/{service}", json=body).status_code == 200
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": {"medication": "RXNORM#596 alprazolam"}})
    assert client.post(SIGN, json=body).json == {"cards": []}


def test_svc_2_to_svc_6_card_shape(client: Any, loaded: Any) -> None:
    cards = client.post(SIGN, json=_severe_request(loaded)).json["cards"]
    assert {"CI-05", "CI-10", "TIM-02", "DDI-01"} <= {c["extension"]["protocol-engine"]["rule"] for c in cards}
    uuids = []
    for card in cards:
        # SVC-2
        assert len(card["summary"]) <= 139 and card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        if "url" in card["source"]:
            assert card["source"]["url"].startswith(("https://", "http://"))
        # SVC-3
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            recommended = [s for s in card["suggestions"] if s.get("isRecommended")]
            assert card["selectionBehavior"] != "at-most-one" or len(recommended) <= 1
            for s in card["suggestions"]:
                assert s["label"] and s["actions"]
                uuids.append(s["uuid"])
                for a in s["actions"]:
                    assert a["type"] in ("create", "update", "delete") and a["description"]
                    if a["type"] == "create":
                        assert a["resource"]["resourceType"]
                    if a["type"] == "delete":
                        assert re.match(r"^[A-Za-z]+/[^/]+$", a["resourceId"]) and "resource" not in a
        # SVC-4
        for reason in card.get("overrideReasons", []):
            assert reason["code"] and reason["system"] and reason["display"]
        if card["indicator"] != "info":
            assert card["overrideReasons"]
        # SVC-5
        uuids.append(card["uuid"])
        # SVC-6
        assert not _no_empty(card), _no_empty(card)
        assert isinstance(card["extension"], dict) and isinstance(card["extension"]["protocol-engine"], dict)
    assert len(uuids) == len(set(uuids))


def test_svc_7_detail_carries_no_raw_html(client: Any, loaded: Any) -> None:
    cards = client.post(SIGN, json=_severe_request(loaded)).json["cards"]
    ci10 = next(c for c in cards if c["extension"]["protocol-engine"]["rule"] == "CI-10")
    for card in cards:
        assert "<script" not in card["detail"] and "<" not in card["detail"].replace("&lt;", "")
    assert "&lt;script&gt;" in ci10["detail"]


# -- request validation -----------------------------------------------------------------
def test_req_1_missing_members_or_wrong_hook_are_400(client: Any, loaded: Any) -> None:
    good = _severe_request(loaded)
    for broken in ({k: v for k, v in good.items() if k != name} for name in ("hook", "hookInstance", "context")):
        response = client.post(SIGN, json=broken)
        assert response.status_code == 400 and response.json["resourceType"] == "OperationOutcome"
    response = client.post(SIGN, json={**good, "hook": "order-select"})
    assert response.status_code == 400 and response.json["issue"][0]["expression"] == ["hook"]


def test_req_2_fhir_authorization_without_fhir_server_is_400(client: Any, loaded: Any) -> None:
    body = {**_severe_request(loaded), "fhirAuthorization": {"access_token": "x", "token_type": "Bearer",
                                                              "expires_in": 300, "scope": "user/*.read", "subject": "s"}}
    response = client.post(SIGN, json=body)
    assert response.status_code == 400 and "fhirServer" in response.json["issue"][0]["diagnostics"]


def test_req_3_unknown_service_is_404(client: Any, loaded: Any) -> None:
    response = client.post("/cds-services/nope", json=_severe_request(loaded))
    assert response.status_code == 404 and response.json["resourceType"] == "OperationOutcome"


def test_req_4_context_fields_present_and_typed(client: Any, loaded: Any) -> None:
    good = _severe_request(loaded)
    mutations = [
        ("userId", "Patient/x"),            # order-sign: Practitioner or PractitionerRole only (ord-1)
        ("userId", "123"),                  # not Type/id
        ("patientId", None),
        ("patientId", 42),
        ("draftOrders", {"resourceType": "Patient"}),
        ("draftOrders", None),
    ]
    for field, value in mutations:
        body = copy.deepcopy(good)
        if value is None:
            del body["context"][field]
        else:
            body["context"][field] = value
        response = client.post(SIGN, json=body)
        assert response.status_code == 400, (field, value)
        assert response.json["issue"][0]["expression"] == [f"context.{field}"]
    select = sample_request("healthy-maintenance", "order-select", None, loaded.runtimes["ketamine-order-select"].resource_types())
    assert select is not None
    select["context"]["selections"] = ["MedicationRequest/not-in-draft-orders"]
    assert client.post("/cds-services/ketamine-order-select", json=select).status_code == 400
    start = sample_request("healthy-maintenance", "encounter-start", None, loaded.runtimes["ketamine-encounter-start"].resource_types())
    assert start is not None
    del start["context"]["encounterId"]
    assert client.post("/cds-services/ketamine-encounter-start", json=start).status_code == 400


def test_a_request_without_any_prefetch_member_is_normal(client: Any, loaded: Any) -> None:
    body = {k: v for k, v in _severe_request(loaded).items() if k != "prefetch"}
    response = client.post(SIGN, json=body)
    assert response.status_code == 412  # nothing to work with and no fhirServer: not a 500
    assert response.json["resourceType"] == "OperationOutcome"


# -- prefetch and the fetch path ----------------------------------------------------------
@pytest.fixture()
def fhir(loaded: Any, app: Any) -> Iterator[FhirServer]:
    body = _severe_request(loaded)
    resources = prefetch_resources(body["prefetch"])
    server = FhirServer(resources, page_size=2)
    app.extensions["protocol_engine"]["fhir_servers"] = (server.base,)  # PROTOCOL_ENGINE_FHIR_SERVERS
    yield server
    server.close()


def _rules(response: Any) -> list[str]:
    return sorted(c["extension"]["protocol-engine"]["rule"] for c in response.json["cards"])


def test_pf_1_full_prefetch_makes_no_outbound_calls(client: Any, loaded: Any, fhir: FhirServer) -> None:
    body = {**_severe_request(loaded), "fhirServer": fhir.base,
            "fhirAuthorization": {"access_token": "secret-token", "token_type": "Bearer", "expires_in": 300,
                                  "scope": "user/*.read", "subject": "svc"}}
    assert client.post(SIGN, json=body).status_code == 200
    assert fhir.requests == []


def test_pf_2_absent_keys_are_fetched_with_the_token_and_give_the_same_cards(
        client: Any, loaded: Any, fhir: FhirServer) -> None:
    prefetched = client.post(SIGN, json=_severe_request(loaded))
    body = {k: v for k, v in _severe_request(loaded).items() if k != "prefetch"}
    body.update(fhirServer=fhir.base, fhirAuthorization={
        "access_token": "secret-token", "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read",
        "subject": "svc"})
    fetched = client.post(SIGN, json=body)
    assert fetched.status_code == 200, fetched.json
    assert _rules(fetched) == _rules(prefetched)
    assert fhir.requests and all(r["authorization"] == "Bearer secret-token" for r in fhir.requests)
    observation_calls = [r["path"] for r in fhir.requests if r["path"].startswith("/fhir/Observation")]
    assert any("date=ge" in p for p in observation_calls), "the service bounds its own searches by date"


def test_pf_3_absent_key_without_fhir_server_is_412_naming_the_key(client: Any, loaded: Any) -> None:
    body = _severe_request(loaded)
    del body["prefetch"]["conditions"]
    response = client.post(SIGN, json=body)
    assert response.status_code == 412
    assert "conditions" in response.json["issue"][0]["diagnostics"]
    assert response.json["issue"][0]["expression"] == ["conditions"]


def test_pf_4_null_means_no_data_no_fetch_no_412(client: Any, loaded: Any, fhir: FhirServer) -> None:
    body = {**_severe_request(loaded), "fhirServer": fhir.base}
    body["prefetch"]["conditions"] = None
    response = client.post(SIGN, json=body)
    assert response.status_code == 200 and "CI-10" not in _rules(response)
    assert fhir.requests == []


def test_pf_5_operation_outcome_is_refetched_or_412(client: Any, loaded: Any, fhir: FhirServer) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    body = _severe_request(loaded)
    body["prefetch"]["conditions"] = outcome
    assert client.post(SIGN, json=body).status_code == 412
    body["fhirServer"] = fhir.base
    response = client.post(SIGN, json=body)
    assert response.status_code == 200 and "CI-10" in _rules(response)
    assert [r["path"].split("?")[0] for r in fhir.requests] == ["/fhir/Condition"]


@pytest.mark.parametrize("mode", ["401", "404", "500", "garbage", "outcome", "slow"])
def test_pf_6_a_broken_fhir_server_gives_412_within_the_budget(
        client: Any, loaded: Any, fhir: FhirServer, app: Any, mode: str) -> None:
    fhir.mode = mode
    body = {**_severe_request(loaded), "fhirServer": fhir.base}
    del body["prefetch"]["observations"]
    started = time.monotonic()
    response = client.post(SIGN, json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 412, response.json
    assert "observations" in response.json["issue"][0]["diagnostics"]
    settings = app.extensions["protocol_engine"]["settings"]
    assert elapsed < settings.request_deadline + 1.0


def test_pf_7_paginated_prefetch_is_followed_and_empty_searchset_is_fine(
        client: Any, loaded: Any, fhir: FhirServer) -> None:
    body = _severe_request(loaded)
    conditions = body["prefetch"]["conditions"]["entry"]
    body["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                                      "link": [{"relation": "next", "url": f"{fhir.base}/Condition?patient=p&_page=0"}]}
    body["fhirServer"] = fhir.base
    response = client.post(SIGN, json=body)
    assert response.status_code == 200 and "CI-10" in _rules(response)
    assert conditions
    fhir.requests.clear()
    fhir.resources = fhir.resources + [dict(r["resource"], id=f"c{i}") for i, r in enumerate(conditions * 5)]
    body2 = {k: v for k, v in _severe_request(loaded).items()}
    del body2["prefetch"]["conditions"]
    body2["fhirServer"] = fhir.base
    response = client.post(SIGN, json=body2)
    assert response.status_code == 200
    assert sum(1 for r in fhir.requests if r["path"].startswith("/fhir/Condition")) >= 3  # followed next links
    body3 = _severe_request(loaded)
    body3["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset"}
    assert client.post(SIGN, json=body3).status_code == 200


def test_paginated_prefetch_without_fhir_server_is_412(client: Any, loaded: Any) -> None:
    body = _severe_request(loaded)
    body["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": "https://ehr.example/Condition?page=2"}]
    assert client.post(SIGN, json=body).status_code == 412


# -- limits, content types --------------------------------------------------------------
def test_a_500_observation_chart_passes_and_an_oversized_body_is_413(client: Any, loaded: Any) -> None:
    given = [bp(120 + i % 20, 70 + i % 15, at=f"-{i + 1}h", id=f"bp-{i}") for i in range(500)]
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER, "given": given})
    raw = json.dumps(body)
    assert len(raw) > 250_000
    assert client.post(SIGN, data=raw, content_type="application/json").status_code == 200
    huge = "x" * (5 * 1024 * 1024 + 10)
    response = client.post(SIGN, data=huge, content_type="application/json")
    assert response.status_code == 413 and response.json["resourceType"] == "OperationOutcome"


def test_body_limit_is_configurable(tmp_path: Path, loaded: Any) -> None:
    from server import create_app

    app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db", "max_body": 1000,
                      "reload_interval": 0})
    response = app.test_client().post(SIGN, json=_severe_request(loaded))
    assert response.status_code == 413
    app.extensions["protocol_engine"]["audit"].flush()


def test_415_for_non_json_and_405_for_wrong_method(client: Any) -> None:
    assert client.post(SIGN, data="a=b", content_type="application/x-www-form-urlencoded").status_code == 415
    response = client.put("/cds-services")
    assert response.status_code == 405 and response.json["resourceType"] == "OperationOutcome"


# -- CORS ------------------------------------------------------------------------------
def test_cors_1_preflight_from_an_allowed_origin(tmp_path: Path) -> None:
    from server import create_app

    app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0,
                      "cors_origins": "https://sandbox.cds-hooks.org"})
    c = app.test_client()
    ok = c.options(SIGN, headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
                                  "Access-Control-Request-Headers": "authorization, content-type"})
    assert ok.status_code in (200, 204)
    assert ok.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    allowed = ok.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    evil = c.options(SIGN, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    app.extensions["protocol_engine"]["audit"].flush()


def test_openapi_document_is_served_and_true(client: Any) -> None:
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").json
    validate(doc)
    paths = set(doc["paths"])
    for rule in client.application.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        if path.startswith(("/cds-services", "/healthz", "/readyz", "/metrics")):
            assert path in paths, path
    services = doc["paths"]["/cds-services/{service_id}"]["post"]["parameters"][0]["schema"]["enum"]
    assert sorted(services) == sorted(HOOK_OF)
