"""The three stages of a hook call, one by one (hooks/prepare.py, hooks/gather.py, hooks/evaluate.py).

Inputs are a request captured from the public CDS Hooks sandbox (tests/data, data this project did not write) and
small edits of it; the stages are called directly, the way the HTTP view (http/cds.py) and hooks/pipeline.run
compose them.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.fhir import normalise, prefetch
from adapters.fhir.prefetch import TEMPLATES, TYPE_OF_KEY
from protocol_engine.core.errors import BadRequest
from protocol_engine.hooks.evaluate import evaluate
from protocol_engine.hooks.gather import gather
from protocol_engine.hooks.pipeline import run
from protocol_engine.hooks.prepare import prepare

CAPTURED = Path(__file__).resolve().parent / "data" / "captured-order-sign-severe-hypertension.json"
CAPTURED_AT = dt.datetime(2026, 11, 30, 7, 45, tzinfo=dt.UTC)
SIGN = "ketamine-order-sign"


def captured() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(CAPTURED.read_text())
    body.pop("fhirServer", None)  # everything is prefetched: no client, no fetch
    return body


class NoNetwork:
    """A FhirClient that fails the test if a stage reaches for the network."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a stage fetched although everything was prefetched")


def test_prepare_checks_the_body_and_reads_the_draft_orders(loaded: Any) -> None:
    prepared = prepare(loaded.runtimes[SIGN], captured())
    assert prepared.skipped is None and prepared.patient_id == captured()["context"]["patientId"]
    assert prepared.orders is not None and [o.ref for o, _ in prepared.orders.draft_orders] == [
        f"MedicationRequest/{e['resource']['id']}" for e in captured()["context"]["draftOrders"]["entry"]]


def test_prepare_refuses_a_request_of_another_hook(loaded: Any) -> None:
    body = captured()
    body["hook"] = "patient-view"
    with pytest.raises(BadRequest, match="order-sign"):
        prepare(loaded.runtimes[SIGN], body)


def test_an_order_of_no_protocol_drug_is_answered_without_a_fetch(loaded: Any) -> None:
    body = captured()
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationCodeableConcept"] = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": "312938", "display": "sertraline 100 MG Oral Tablet"}]}
    body["prefetch"] = {}  # nothing prefetched: a gather would have to fetch, and the client refuses
    prepared = prepare(loaded.runtimes[SIGN], body)
    gathered = gather(prepared, NoNetwork(), CAPTURED_AT, 2.0, time.monotonic() + 3.0)  # type: ignore[arg-type]
    assert gathered is None
    decision = evaluate(prepared, gathered, CAPTURED_AT, "r1")
    assert decision.cards == [] and decision.skipped is not None
    trace = decision.trace()
    assert trace["skipped"] == decision.skipped and "anchors" not in trace and list(trace["timings"]) == ["total_ms"]


def test_the_draft_orders_are_read_once(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() reads the draft orders; gather() builds the chart from the prefetch and reuses them."""
    drafts_read = []
    to_chart = normalise.to_chart

    def counting(payloads: Any, draft: Any, *args: Any, **kwargs: Any) -> Any:
        drafts_read.append(draft is not None)
        return to_chart(payloads, draft, *args, **kwargs)

    monkeypatch.setattr(normalise, "to_chart", counting)
    decision = run(loaded.runtimes, "r1", SIGN, captured(), CAPTURED_AT)
    assert decision.cards and drafts_read == [True, False]


def test_gather_reads_the_prefetch_into_a_chart_without_a_client(loaded: Any) -> None:
    prepared = prepare(loaded.runtimes[SIGN], captured())
    gathered = gather(prepared, None, CAPTURED_AT)
    assert gathered is not None
    assert set(gathered.sources) == set(loaded.runtimes[SIGN].templates)
    assert gathered.chart.observations and gathered.medications is None
    assert {"prefetch_ms", "parse_ms"} <= set(prepared.timings)


def test_evaluate_is_pure_and_its_decision_names_each_card_s_rule(loaded: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = prepare(loaded.runtimes[SIGN], captured())
    gathered = gather(prepared, None, CAPTURED_AT)

    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluate reached the FHIR adapter")

    for module, name in ((prefetch, "resolve"), (prefetch, "read_all"), (normalise, "to_chart")):
        monkeypatch.setattr(module, name, no_io)
    decision = evaluate(prepared, gathered, CAPTURED_AT, "r1")
    rules = [c.rule.id for c in decision.issued]
    assert "CI-05" in rules  # the captured patient's BP is severe
    assert rules == [c["extension"]["protocol-engine"]["rule"] for c in decision.cards]
    assert all(f.rule.id == c.rule.id for c in decision.issued for f in c.findings)
    trace = decision.trace()
    json.dumps(trace)  # the trace is stored as JSON
    assert [c["rule"] for c in trace["cards"]] == rules
    assert {f["rule"] for f in trace["fired"]} >= set(rules)
    assert trace["anchors"] == [{"kind": "draft-order", "at": CAPTURED_AT.isoformat()}]
    assert {"derive_ms", "evaluate_ms", "cards_ms"} <= set(trace["timings"])


def test_run_is_the_three_stages(loaded: Any) -> None:
    """The composition adds nothing: the same cards, fired rules and facts as the stages called one by one."""
    whole = run(loaded.runtimes, "r1", SIGN, captured(), CAPTURED_AT)
    prepared = prepare(loaded.runtimes[SIGN], captured())
    decision = evaluate(prepared, gather(prepared, None, CAPTURED_AT), CAPTURED_AT, "r1")

    def strip(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = copy.deepcopy(cards)
        for card in out:  # fresh per rendering
            card.pop("uuid")
            for s in card.get("suggestions", []):
                s.pop("uuid")
        return out

    assert strip(whole.cards) == strip(decision.cards)
    assert whole.fired == decision.fired and whole.facts == decision.facts


def test_one_table_maps_prefetch_keys_and_resource_types_both_ways(loaded: Any) -> None:
    for rtype, (key, _, _) in TEMPLATES.items():
        assert TYPE_OF_KEY[key] == rtype
    for rt in loaded.runtimes.values():
        assert {TEMPLATES[rtype][0]: rtype for rtype in rt.resource_types().values()} == rt.resource_types()
