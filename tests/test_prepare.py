"""hooks/prepare.py and adapters/fhir/hook_request.py on their own: a request body -> HookRequest -> Prepared.

Inputs are requests the public CDS Hooks sandbox sent (tests/data/captured-*.json, copied from
/work/shared/cds-hooks/captured: shapes this project did not write, among them a draftOrders Bundle without `type`,
a MedicationRequest `category` given as an object and a dose in `{pill}` with no route) and one-field edits of them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir import hook_request
from protocol_engine.core.errors import BadRequest
from protocol_engine.hooks.prepare import prepare

DATA = Path(__file__).resolve().parent / "data"
SELECT, SIGN = "ketamine-order-select", "ketamine-order-sign"


def captured(hook: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / f"captured-{hook}-severe-hypertension.json").read_text())
    return body


def test_the_sandbox_s_order_select_parses_as_sent() -> None:
    body = captured("order-select")
    request = hook_request.parse(copy.deepcopy(body), "order-select")
    assert (request.hook, request.hook_instance, request.patient_id) == (
        "order-select", body["hookInstance"], "severe-hypertension")
    assert request.fhir_server == "http://localhost:18100/fhir" and request.access_token is None
    assert "type" not in request.context["draftOrders"]  # the sandbox leaves it out; the contract does not need it
    assert set(request.prefetch) == set(body["prefetch"])


@pytest.mark.parametrize(("edit", "field"), [
    (lambda b: b["context"].update(selections=["MedicationRequest/not-in-the-bundle"]), "context.selections"),
    (lambda b: b["context"].update(userId="Patient/severe-hypertension"), "context.userId"),
    (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
    (lambda b: b["context"].update(patientId="a/b"), "context.patientId"),
    (lambda b: (b.pop("fhirServer"), b.update(fhirAuthorization={"access_token": "t"})), "fhirAuthorization"),
    (lambda b: b.update(fhirServer="http://ehr.example/fhir?x=1"), "fhirServer"),
    (lambda b: b.update(prefetch=[]), "prefetch"),
])
def test_a_breach_of_the_order_select_contract_names_its_field(edit: Any, field: str) -> None:
    body = captured("order-select")
    edit(body)
    with pytest.raises(BadRequest) as caught:
        hook_request.parse(body, "order-select")
    assert caught.value.field == field


def test_the_fhir_server_is_a_base_url_with_a_lower_case_scheme_and_a_bearer_token_is_kept() -> None:
    body = captured("order-sign")
    body["fhirServer"] = "HTTPS://ehr.example/fhir/"
    body["fhirAuthorization"] = {"access_token": "opaque", "token_type": "bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "cds-service"}
    request = hook_request.parse(body, "order-sign")
    assert request.fhir_server == "https://ehr.example/fhir" and request.access_token == "opaque"
    assert "opaque" not in repr(request)  # never in a log line


def test_prepare_reads_the_sandbox_s_draft_order_once_with_its_selection_and_what_it_says(loaded: Any) -> None:
    prepared = prepare(loaded.runtimes[SELECT], captured("order-select"))
    assert prepared.skipped is None and prepared.orders is not None
    [(order, selected)] = prepared.orders.draft_orders
    assert selected and order.ref == "MedicationRequest/request-123" and order.status == "draft"
    assert ("http://www.nlm.nih.gov/research/umls/rxnorm", "238082") in {c[:2] for c in order.medication.codings}
    assert order.route is None and order.dose is not None and (order.dose.value, order.dose.unit) == (1.0, "{pill}")
    assert order.authored_day_only  # authoredOn "2026-11-30": a day, never shown as 00:00
    assert prepared.orders.foreign == [] and prepared.timings == {}  # nothing fetched or parsed beyond the orders


def test_an_unselected_draft_order_is_read_but_not_judged(loaded: Any) -> None:
    body = captured("order-select")
    other = copy.deepcopy(body["context"]["draftOrders"]["entry"][0])
    other["resource"]["id"] = "request-456"
    body["context"]["draftOrders"]["entry"].append(other)
    prepared = prepare(loaded.runtimes[SELECT], body)
    assert prepared.orders is not None
    assert [(o.ref, s) for o, s in prepared.orders.draft_orders] == [
        ("MedicationRequest/request-123", True), ("MedicationRequest/request-456", False)]


def test_a_draft_order_of_another_patient_is_set_aside_not_read_as_this_patient_s(loaded: Any) -> None:
    body = captured("order-sign")
    body["context"]["draftOrders"]["entry"][0]["resource"]["subject"] = {"reference": "Patient/someone-else"}
    prepared = prepare(loaded.runtimes[SIGN], body)
    assert prepared.orders is not None and prepared.orders.draft_orders == []
    assert [i.ref for i in prepared.orders.foreign] == [
        f"MedicationRequest/{body['context']['draftOrders']['entry'][0]['resource']['id']}"]
    assert prepared.skipped is None  # not identified as "no protocol drug": it is evaluated, and named
