"""hooks/gather.py and adapters/fhir/prefetch.py on their own: each prefetch key read, or fetched from a real FHIR
server on loopback (tests/fhir_server.py) through the client and within the deadline the caller gives.

The request is the one the public CDS Hooks sandbox sent for order-sign (tests/data), with keys taken out of its
prefetch and served by the local FHIR server instead."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fhir_server import FhirServer, prefetch_resources

from adapters.fhir.client import HttpxFhirClient
from adapters.fhir.prefetch import TEMPLATES, TYPE_OF_KEY
from protocol_engine.core.errors import PrefetchUnavailable
from protocol_engine.hooks.gather import Gathered, gather
from protocol_engine.hooks.prepare import prepare

CAPTURED = Path(__file__).resolve().parent / "data" / "captured-order-sign-severe-hypertension.json"
CAPTURED_AT = dt.datetime(2026, 11, 30, 7, 45, tzinfo=dt.UTC)
SIGN = "ketamine-order-sign"


@pytest.fixture()
def server() -> Iterator[FhirServer]:
    body = json.loads(CAPTURED.read_text())
    fhir = FhirServer(prefetch_resources(body["prefetch"]), page_size=50)
    yield fhir
    fhir.close()


def body_without(keys: tuple[str, ...], server: FhirServer | None = None) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(CAPTURED.read_text())
    for key in keys:
        del body["prefetch"][key]
    if server is not None:
        body["fhirServer"] = server.base
        body["fhirAuthorization"] = {"access_token": "token-for-the-ehr", "token_type": "Bearer"}
    else:
        body.pop("fhirServer")
    return body


def gathered(loaded: Any, body: dict[str, Any], deadline: float | None = None) -> Gathered:
    prepared = prepare(loaded.runtimes[SIGN], body)
    result = gather(prepared, HttpxFhirClient(), CAPTURED_AT, 2.0,
                    time.monotonic() + 3.0 if deadline is None else deadline)
    assert result is not None
    return result


def test_every_key_of_the_service_maps_to_the_resource_type_its_template_asks_for(loaded: Any) -> None:
    for key, rtype in loaded.runtimes[SIGN].resource_types().items():
        assert TYPE_OF_KEY[key] == rtype and TEMPLATES[rtype][0] == key
        assert loaded.runtimes[SIGN].templates[key].startswith(rtype)  # `Observation?patient=...` / `Patient/...`


def test_a_key_missing_from_the_prefetch_is_fetched_with_its_date_bound_and_the_ehr_s_token(
        loaded: Any, server: FhirServer) -> None:
    result = gathered(loaded, body_without(("observations",), server))
    assert result.sources["observations"] == "fetched"
    assert {k for k, v in result.sources.items() if v == "prefetch"} == set(loaded.runtimes[SIGN].templates) - {
        "observations"}
    [sent] = server.requests
    url = urlsplit(sent["path"])
    query = parse_qs(url.query)
    assert url.path == "/fhir/Observation" and query["patient"] == ["severe-hypertension"]
    lookback_h = loaded.runtimes[SIGN].pack.protocol.fetch["Observation"]
    since = (CAPTURED_AT - dt.timedelta(hours=lookback_h)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert query["date"] == [f"ge{since}"] and query["code"] and query["_count"] == ["200"]
    assert sent["authorization"] == "Bearer token-for-the-ehr"
    assert result.chart.observations  # the fetched Bundle read into the chart like a prefetched one


def test_fetched_and_prefetched_give_the_same_chart(loaded: Any, server: FhirServer) -> None:
    keys = ("observations", "conditions", "patient")
    fetched = gathered(loaded, body_without(keys, server)).chart
    prefetched = gathered(loaded, body_without((), None)).chart
    assert [o.ref for o in fetched.observations] == [o.ref for o in prefetched.observations]
    assert [c.ref for c in fetched.conditions] == [c.ref for c in prefetched.conditions]
    assert fetched.patient == prefetched.patient


def test_a_null_key_means_no_data_and_is_not_fetched(loaded: Any, server: FhirServer) -> None:
    body = body_without((), server)
    body["prefetch"]["allergies"] = None
    result = gathered(loaded, body)
    assert result.sources["allergies"] == "null" and server.requests == [] and result.chart.allergies == []


def test_a_missing_key_without_a_client_or_after_the_deadline_is_named_not_guessed(
        loaded: Any, server: FhirServer) -> None:
    prepared = prepare(loaded.runtimes[SIGN], body_without(("conditions",), None))
    with pytest.raises(PrefetchUnavailable) as no_client:
        gather(prepared, None, CAPTURED_AT)
    assert no_client.value.keys == ["conditions"]
    with pytest.raises(PrefetchUnavailable) as late:  # the caller's deadline has passed: nothing is waited for
        gathered(loaded, body_without(("conditions",), server), deadline=time.monotonic() - 1)
    # whether the fetch thread or the wait notices first
    assert late.value.keys == ["conditions"] and any(
        why in (late.value.detail or "") for why in ("deadline passed", "out of time"))
    assert server.requests == []


def test_an_offline_gather_reads_the_prefetch_alone(loaded: Any) -> None:
    prepared = prepare(loaded.runtimes[SIGN], body_without((), None))
    result = gather(prepared, None, CAPTURED_AT)  # the offline callers' way: no client, no deadline
    assert result is not None and set(result.sources.values()) == {"prefetch"}
    with pytest.raises(ValueError, match="deadline"):  # a client is only ever used within a deadline
        gather(prepared, HttpxFhirClient(), CAPTURED_AT)
