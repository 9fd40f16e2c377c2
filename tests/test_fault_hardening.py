"""Faults degrade as promised (issue 17): feedback never refused for ever, traces retried and stored whatever
the strings, bounded feedback posts, chunked bodies over the limit refused."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

SIGN = "/cds-services/ketamine-order-sign"


def _body(loaded: Any, instance: str | None = None) -> dict[str, Any]:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    body["hookInstance"] = instance or str(uuid.uuid4())
    return body


def _override(card: dict[str, Any], at: str = "2026-11-21T10:00:00Z") -> dict[str, Any]:
    return {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": at,
            "overrideReason": {"reason": card["overrideReasons"][0]}}


def test_feedback_for_a_card_still_in_another_workers_batch_is_stored_and_reconciled(
        db_url: str, loaded: Any) -> None:
    """Probe: feedback for a card whose trace was still in another worker's 250 ms batch got a permanent 400."""
    from server import create_app

    worker_a = create_app({"auth": "disabled", "database_url": db_url, "reload_interval": 0})
    worker_b = create_app({"auth": "disabled", "database_url": db_url, "reload_interval": 0})
    store = worker_a.extensions["protocol_engine"]["store"]
    try:
        # worker A serves the card; its trace waits in A's write batch (the database is away for A's writer)
        audit_a = worker_a.extensions["protocol_engine"]["audit"]
        good_engine = store.engine
        broken = create_engine("postgresql+psycopg://nobody:x@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
        store.engine = broken
        cards = worker_a.test_client().post(SIGN, json=_body(loaded)).json["cards"]
        ci05 = next(c for c in cards if c["extension"]["protocol-engine"]["rule"] == "CI-05")
        # worker B gets the feedback first: acknowledged, not refused
        response = worker_b.test_client().post(SIGN + "/feedback", json={"feedback": [_override(ci05)]})
        assert response.status_code == 200 and response.json == {"stored": 1, "received": 1}
        now = dt.datetime.now(dt.UTC)
        report = {r["rule"]: r for r in store.rule_report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))}
        assert "CI-05" not in report  # the card is not on record yet
        store.engine = good_engine  # the database is back: A's writer retries its batch
        broken.dispose()
        deadline = time.monotonic() + 10
        while audit_a.failing and time.monotonic() < deadline:
            time.sleep(0.1)
        assert audit_a.flush(10)
        report = {r["rule"]: r for r in store.rule_report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))}
        assert report["CI-05"]["fired"] == 1 and report["CI-05"]["overridden"] == 1  # reconciled by uuid
    finally:
        for app in (worker_a, worker_b):
            app.extensions["protocol_engine"]["audit"].flush()
            app.extensions["protocol_engine"]["store"].engine.dispose()


def test_failed_trace_batches_are_retried_not_dropped(db_url: str) -> None:
    """Probe: a trace batch written during an outage was logged and dropped."""
    from protocol_engine.runtime import audit
    from protocol_engine.runtime.audit import AuditWriter
    from protocol_engine.runtime.store import Store

    store = Store(db_url)
    store.migrate()
    writer = AuditWriter(store)
    good_engine = store.engine
    broken = create_engine("postgresql+psycopg://nobody:x@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    store.engine = broken
    stamp = uuid.uuid4().hex[:8]
    at = dt.datetime.now(dt.UTC)
    try:
        for n in range(5):
            writer.record({"hookInstance": f"outage-{stamp}-{n}", "service": "s", "hook": "order-sign",
                           "ruleset": "r", "cards": [{"uuid": str(uuid.uuid4()), "rule": "CI-05", "version": "1",
                                                      "indicator": "critical"}]}, "Patient/p", at)
        deadline = time.monotonic() + 10
        while not writer.failing and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.failing
        assert writer.flush(0.1) is False  # flush says "not written" at once during an outage
    finally:
        store.engine = good_engine
        broken.dispose()
    deadline = time.monotonic() + audit.RETRY_MAX_S
    while writer.failing and time.monotonic() < deadline:  # the next retry (back-off) finds the database back
        time.sleep(0.1)
    assert writer.flush(15)
    assert all(store.decisions(f"outage-{stamp}-{n}") for n in range(5))
    store.engine.dispose()


@pytest.mark.parametrize("instance", ["\ud800", "a\udfffb", "\ud83d", "x" * 100 + "\udc00"])
def test_a_trace_is_stored_whatever_the_strings(store_app: Any, loaded: Any, instance: str) -> None:
    """Probe: a lone surrogate in hookInstance made the trace unstorable (an unaudited decision)."""
    body = _body(loaded)
    body["hookInstance"] = instance
    raw = json.dumps(body)  # escapes the lone surrogates as \\udXXX, as a client would send them
    response = store_app.test_client().post(SIGN, data=raw, content_type="application/json")
    assert response.status_code == 200
    assert store_app.extensions["protocol_engine"]["audit"].flush(10)
    expected = instance.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    stored = store_app.extensions["protocol_engine"]["store"].decisions(expected)
    assert len(stored) == 1 and stored[0].trace["cards"]


def test_a_feedback_post_is_capped(store_app: Any, loaded: Any) -> None:
    """Probe: a feedback POST of 42,000 items held a thread for 48 s."""
    cards = store_app.test_client().post(SIGN, json=_body(loaded)).json["cards"]
    settings = store_app.extensions["protocol_engine"]["settings"]
    items = [_override(cards[0], f"2026-11-21T10:{n // 60:02d}:{n % 60:02d}Z") for n in range(42_000)]
    started = time.monotonic()
    response = store_app.test_client().post(SIGN + "/feedback", json={"feedback": items})
    assert time.monotonic() - started < 5
    assert response.status_code == 413 and response.json["resourceType"] == "OperationOutcome"
    assert store_app.extensions["protocol_engine"]["store"].feedback_count() == 0
    # Under the body limit but over the item limit: the answer names the item limit.
    response = store_app.test_client().post(SIGN + "/feedback", json={"feedback": items[:1000]})
    assert response.status_code == 413 and response.json["resourceType"] == "OperationOutcome"
    assert str(settings.max_feedback_items) in response.json["issue"][0]["diagnostics"]
    assert store_app.extensions["protocol_engine"]["store"].feedback_count() == 0
    ok = {"feedback": items[:settings.max_feedback_items]}
    assert store_app.test_client().post(SIGN + "/feedback", json=ok).json["stored"] == settings.max_feedback_items


def test_feedback_store_down_is_503_with_retry_after(store_app: Any, loaded: Any) -> None:
    cards = store_app.test_client().post(SIGN, json=_body(loaded)).json["cards"]
    store = store_app.extensions["protocol_engine"]["store"]
    good_engine, good_session = store.engine, store.session
    broken = create_engine("postgresql+psycopg://nobody:x@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    store.engine, store.session = broken, sessionmaker(broken)
    try:
        response = store_app.test_client().post(SIGN + "/feedback", json={"feedback": [_override(cards[0])]})
        assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
        assert response.json["resourceType"] == "OperationOutcome"
    finally:
        store.engine, store.session = good_engine, good_session
        broken.dispose()
