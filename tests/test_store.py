"""Decision trace, feedback, report and health endpoints on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import ADULT, KETAMINE_ORDER, Gunicorn, bp, request_for
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

SIGN = "/cds-services/ketamine-order-sign"


def _sign(app: Any, loaded: Any, instance: str = "hi-1") -> list[dict[str, Any]]:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    body["hookInstance"] = instance
    response = app.test_client().post(SIGN, json=body)
    assert response.status_code == 200
    app.extensions["protocol_engine"]["audit"].flush()
    return list(response.json["cards"])


def _rule_version(loaded: Any, rule_id: str) -> str:
    """The version the rule file declares (the trace must carry the version that fired, whatever it is today)."""
    return next(r.version for r in loaded.packset.all_rules() if r.id == rule_id)


def test_decision_trace_answers_why_this_card_appeared(store_app: Any, loaded: Any) -> None:
    cards = _sign(store_app, loaded, "why-1")
    store = store_app.extensions["protocol_engine"]["store"]
    [decision] = store.decisions("why-1")
    trace = decision.trace
    assert decision.service == "ketamine-order-sign" and decision.patient == "Patient/test-patient"
    assert trace["ruleset"] == cards[0]["extension"]["protocol-engine"]["ruleset"]
    fired = {f["rule"]: f for f in trace["fired"]}
    assert fired["CI-05"]["evidence"] == ["Observation/bp-1"] and fired["CI-05"]["version"] == _rule_version(loaded, "CI-05")
    assert {c["uuid"] for c in trace["cards"]} == {c["uuid"] for c in cards}
    assert trace["sources"]["observations"] == "prefetch"
    assert {"prefetch_ms", "parse_ms", "derive_ms", "evaluate_ms", "cards_ms", "total_ms"} <= set(trace["timings"])


def _feedback(card: dict[str, Any], outcome: str = "overridden", stamp: str = "2026-11-21T10:00:00Z",
              **extra: Any) -> dict[str, Any]:
    item = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": stamp, **extra}
    if outcome == "overridden" and "overrideReason" not in extra:
        item["overrideReason"] = {"reason": card["overrideReasons"][0]}
    return item


def test_fb_1_feedback_is_stored_several_items_per_call(store_app: Any, loaded: Any) -> None:
    cards = _sign(store_app, loaded)
    ci05 = next(c for c in cards if c["extension"]["protocol-engine"]["rule"] == "CI-05")
    suggestion = ci05["suggestions"][0]["uuid"]
    body = {"feedback": [_feedback(ci05), _feedback(ci05, "accepted", "2026-11-21T10:01:00Z",
                                                    acceptedSuggestions=[{"id": suggestion}])]}
    response = store_app.test_client().post(SIGN + "/feedback", json=body)
    assert response.status_code == 200 and response.json == {"stored": 2, "received": 2}
    assert store_app.extensions["protocol_engine"]["store"].feedback_count() == 2


@pytest.mark.parametrize("mutate", [
    lambda i: i.update(outcome="ignored"),
    lambda i: i.update(outcome="accepted"),                  # accepted without acceptedSuggestions
    lambda i: i.update(overrideReason={}),                   # neither reason nor userComment
    lambda i: i.pop("card"),
    lambda i: i.pop("outcomeTimestamp"),
    lambda i: i.update(outcomeTimestamp="yesterday"),
    lambda i: i.update(card="not-a-uuid"),                   # not a card this service could have issued
])
def test_fb_2_bad_feedback_is_400(store_app: Any, loaded: Any, mutate: Any) -> None:
    cards = _sign(store_app, loaded)
    item = _feedback(cards[0])
    mutate(item)
    response = store_app.test_client().post(SIGN + "/feedback", json={"feedback": [item]})
    assert response.status_code == 400 and response.json["resourceType"] == "OperationOutcome"
    assert store_app.extensions["protocol_engine"]["store"].feedback_count() == 0


def test_fb_3_repeated_feedback_is_idempotent(store_app: Any, loaded: Any) -> None:
    cards = _sign(store_app, loaded)
    body = {"feedback": [_feedback(cards[0])]}
    client = store_app.test_client()
    assert client.post(SIGN + "/feedback", json=body).json["stored"] == 1
    assert client.post(SIGN + "/feedback", json=body).json == {"stored": 0, "received": 1}
    assert store_app.extensions["protocol_engine"]["store"].feedback_count() == 1


RECENT = (dt.date.today() - dt.timedelta(days=30)).isoformat()


def test_report_counts_fired_accepted_overridden_with_reasons(store_app: Any, loaded: Any, db_url: str) -> None:
    from protocol_engine.cli import main

    client = store_app.test_client()
    for n in range(3):
        cards = _sign(store_app, loaded, f"r-{n}")
        ci05 = next(c for c in cards if c["extension"]["protocol-engine"]["rule"] == "CI-05")
        item = _feedback(ci05) if n < 2 else _feedback(ci05, "accepted", acceptedSuggestions=[
            {"id": ci05["suggestions"][0]["uuid"]}])
        assert client.post(SIGN + "/feedback", json={"feedback": [item]}).status_code == 200
    runner = CliRunner()
    text = runner.invoke(main, ["report", "--database", db_url, "--since", RECENT])
    assert text.exit_code == 0, text.output
    line = next(l for l in text.output.splitlines() if l.startswith("CI-05"))
    assert line.split()[1:4] == ["3", "1", "2"]
    assert "BP re-checked after rest" in text.output
    csv_out = runner.invoke(main, ["report", "--database", db_url, "--since", RECENT, "--format", "csv"])
    assert csv_out.output.splitlines()[0].startswith("rule,fired,accepted,overridden")
    assert any(l.startswith("CI-05,3,1,2,67,") for l in csv_out.output.splitlines())


def test_health_readiness_and_metrics(store_app: Any, loaded: Any) -> None:
    client = store_app.test_client()
    _sign(store_app, loaded)
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["rules"] >= 60
    metrics = client.get("/metrics").get_data(as_text=True)
    for name in ("protocol_engine_requests_total", "protocol_engine_request_seconds_bucket",
                 "protocol_engine_stage_seconds_bucket", 'protocol_engine_cards_total{indicator="critical",rule="CI-05"}',
                 "protocol_engine_fetch_errors_total", "protocol_engine_db_errors_total"):
        assert name in metrics, name


def test_a_database_outage_never_fails_a_hook_call(store_app: Any, loaded: Any) -> None:
    store = store_app.extensions["protocol_engine"]["store"]
    good_engine, good_session = store.engine, store.session
    broken = create_engine("postgresql+psycopg://nobody:x@127.0.0.1:1/none",
                           connect_args={"connect_timeout": 1}, pool_pre_ping=True)
    store.engine, store.session = broken, sessionmaker(broken)
    try:
        cards = _sign(store_app, loaded, "outage")
        assert any(c["indicator"] == "critical" for c in cards)
        client = store_app.test_client()
        assert client.get("/readyz").status_code == 503
        assert "protocol_engine_db_errors_total" in client.get("/metrics").get_data(as_text=True)
        response = client.post(SIGN + "/feedback", json={"feedback": [_feedback(cards[0])]})
        assert response.status_code == 503 and response.json["resourceType"] == "OperationOutcome"
    finally:
        store.engine, store.session = good_engine, good_session
        broken.dispose()
    assert store_app.test_client().get("/readyz").status_code == 200  # recovers without a restart


@pytest.mark.slow
def test_acknowledged_feedback_survives_a_hard_kill(db_url: str, loaded: Any, tmp_path: Path) -> None:
    server = Gunicorn(tmp_path / "server", database_url=db_url).start()
    base = server.base
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104)]})
    card = httpx.post(base + SIGN, json=body, timeout=10).json()["cards"][0]
    acknowledged: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        start_time = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        n = 0
        with httpx.Client(base_url=base, timeout=5) as http:
            while not stop.is_set():
                stamp = (start_time + dt.timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
                item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp,
                        "overrideReason": {"reason": card["overrideReasons"][0]}}
                n += 1
                try:
                    response = http.post(SIGN + "/feedback", json={"feedback": [item]})
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    acknowledged.append(stamp)

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # master and workers, mid-stream, no cleanup
    stop.set()
    thread.join(10)
    assert len(acknowledged) >= 50
    server.start()
    try:
        from protocol_engine.runtime.store import Feedback, Store

        store = Store(db_url)
        with store.session() as s:
            stored = {f.outcome_timestamp.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
                      for f in s.query(Feedback).all()}
        store.engine.dispose()
        missing = [a for a in acknowledged if a not in stored]
        assert not missing, f"{len(missing)} acknowledged feedback items lost"
    finally:
        server.close()


def test_workers_booting_together_on_a_fresh_sqlite_file_all_migrate(tmp_path: Path) -> None:
    """Regression: two gunicorn workers raced to create alembic_version and one failed to boot."""
    from protocol_engine.runtime.store import Store

    url = f"sqlite:///{tmp_path}/fresh.db"
    errors: list[BaseException] = []

    def boot() -> None:
        store = Store(url)
        try:
            store.migrate()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            store.engine.dispose()

    threads = [threading.Thread(target=boot) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_traces_queued_together_are_written_in_one_batch_and_a_bad_one_loses_no_other(db_url: str) -> None:
    from protocol_engine.runtime.audit import AuditWriter
    from protocol_engine.runtime.store import Store

    store = Store(db_url)
    store.migrate()
    writer = AuditWriter(store)
    at = dt.datetime.now(dt.UTC)
    stamp = uuid.uuid4().hex[:8]

    def trace(n: int, cards: list[dict[str, Any]]) -> dict[str, Any]:
        return {"hookInstance": f"batch-{stamp}-{n}", "service": "s", "hook": "order-sign", "ruleset": "r",
                "cards": cards}

    card = {"uuid": f"{stamp}-dup", "rule": "CI-05", "version": "1.0.0", "indicator": "critical"}
    gate = threading.Lock()
    gate.acquire()
    real = store.record_decisions
    batches: list[int] = []

    def held(items: list[Any]) -> None:
        with gate:
            batches.append(len(items))
        real(items)

    store.record_decisions = held  # type: ignore[method-assign]
    writer.record(trace(0, []), "Patient/p", at)  # the writer thread holds this one at the gate
    time.sleep(0.2)
    # A trace whose card uuid repeats an earlier card's is refused by the database; it sits in the
    # middle of a batch of good traces, which must all be stored.
    for n in range(1, 6):
        writer.record(trace(n, [card] if n in (2, 4) else []), "Patient/p", at)
    gate.release()
    assert writer.flush(10)
    stored = {n for n in range(6) if store.decisions(f"batch-{stamp}-{n}")}
    assert stored == {0, 1, 2, 3, 5}
    assert max(batches) >= 5  # gathered into one transaction
    store.engine.dispose()


def test_a_sqlite_database_inside_the_metrics_directory_is_refused_at_start(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the benchmark: with both in one directory the metrics collector read the SQLite file
    # as a metrics file and /metrics answered 500.
    from server import create_app

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="inside PROMETHEUS_MULTIPROC_DIR"):
        create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/audit.db", "reload_interval": 0})
    assert not (tmp_path / "audit.db").exists()


def test_a_graceful_stop_writes_every_decision_trace_it_served(tmp_path: Path, loaded: Any) -> None:
    # Traces wait up to audit.GATHER_S to share a transaction; SIGTERM must not lose them.
    import sqlite3

    server = Gunicorn(tmp_path).start()
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104)]})
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            for _ in range(30):
                assert http.post(SIGN, json=body).status_code == 200
    finally:
        server.close()
    with sqlite3.connect(tmp_path / "protocol-engine.db") as db:
        assert db.execute("SELECT count(*) FROM decision").fetchone() == (30,)


def test_feedback_for_a_card_never_on_record_is_deleted_after_the_wait(store_app: Any, loaded: Any) -> None:
    """Probe: feedback for a card with no decision was kept for ever (any authenticated client could fill the
    table). It waits PROTOCOL_ENGINE_UNMATCHED_FEEDBACK_DAYS (7) for its card's decision to land, then goes;
    feedback joined to a card on record stays as long as the card does."""
    from sqlalchemy import select

    from protocol_engine.runtime.feedback import parse_feedback
    from protocol_engine.runtime.store import Feedback

    cards = _sign(store_app, loaded)
    store = store_app.extensions["protocol_engine"]["store"]
    wait = store.unmatched_feedback_ttl
    assert wait == dt.timedelta(days=7)
    never, late = str(uuid.uuid4()), str(uuid.uuid4())

    def rows(*uuids: str) -> list[dict[str, Any]]:
        return parse_feedback({"feedback": [{"card": u, "outcome": "overridden",
                                             "outcomeTimestamp": "2026-11-21T10:00:00Z",
                                             "overrideReason": {"userComment": "x"}} for u in uuids]},
                              "ketamine-order-sign")

    def stored() -> set[str]:
        with store.session() as s:
            return set(s.scalars(select(Feedback.card_uuid)))

    now = dt.datetime.now(dt.UTC)
    long_ago = now - wait - dt.timedelta(hours=2)
    assert store.add_feedback(rows(cards[0]["uuid"], never), long_ago) == 2
    store._next_feedback_purge = 0.0  # the purge runs at most once a minute per worker, with a feedback POST
    assert store.add_feedback(rows(late), now - dt.timedelta(hours=1)) == 1
    assert stored() == {cards[0]["uuid"], late}  # the old unmatched item went; the old matched one stays
    # a card that lands within the wait keeps its feedback: the decision arrives, then the wait runs out
    store.record_decisions([({"hookInstance": "late-1", "service": "ketamine-order-sign", "hook": "order-sign",
                              "ruleset": "r", "cards": [{"uuid": late, "rule": "CI-05", "indicator": "critical"}]},
                             "Patient/p", now)])
    assert store.purge_unmatched_feedback(now + 2 * wait) == 0
    assert stored() == {cards[0]["uuid"], late}
    other = str(uuid.uuid4())
    store.add_feedback(rows(other), now)
    assert store.purge_unmatched_feedback(now + wait - dt.timedelta(minutes=1)) == 0
    assert store.purge_unmatched_feedback(now + wait + dt.timedelta(minutes=1)) == 1
    assert stored() == {cards[0]["uuid"], late}
