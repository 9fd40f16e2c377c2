"""Override analytics: the store's per-rule, per-day figures (SQLite and PostgreSQL), the HTTP endpoint and its
authentication, and the page in headless Chromium with feedback generated in the test."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADULT, KETAMINE_ORDER, Gunicorn, bp, request_for

from protocol_engine.hooks.pipeline import run
from protocol_engine.runtime.feedback import parse_feedback
from protocol_engine.runtime.store import Store

ROOT = Path(__file__).resolve().parent.parent
SIGN = "ketamine-order-sign"
ISS = "https://ehr.example.org"
TODAY = dt.datetime.now(dt.UTC).replace(hour=10, minute=0, second=0, microsecond=0)
CHROMIUM = os.environ.get("PROTOCOL_ENGINE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

# days ago -> (systolic, diastolic, feedback per card): CI-05 fires at >= 180/100, CI-06 above 140/90.
PLAN: dict[int, list[tuple[int, int, str | None]]] = {
    3: [(190, 110, "overridden"), (190, 110, "overridden"), (190, 110, "overridden"), (190, 110, "accepted")],
    2: [(190, 110, "overridden"), (190, 110, None)],
    1: [(190, 110, None), (190, 110, None), (150, 95, "overridden"), (150, 95, "overridden")],
}


def seed(store: Store, loaded: Any, plan: dict[int, list[tuple[int, int, str | None]]] = PLAN) -> None:
    """Real cards from the pipeline on past days, stored as the audit writer stores them, and feedback parsed
    by the same code that parses an EHR's feedback."""
    for days, calls in plan.items():
        now = TODAY - dt.timedelta(days=days)
        for systolic, diastolic, outcome in calls:
            case = {"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(systolic, diastolic)]}
            body = request_for(loaded, SIGN, case, now)
            body["hookInstance"] = str(uuid.uuid4())
            result = run(loaded.runtimes, loaded.packset.revision, SIGN, body, now)
            store.record_decisions([(result.trace(), "Patient/p", now)])
            card = next(c for c in result.cards if c["extension"]["protocol-engine"]["rule"] in ("CI-05", "CI-06"))
            if outcome is None:
                continue
            item: dict[str, Any] = {"card": card["uuid"], "outcome": outcome,
                                    "outcomeTimestamp": (now + dt.timedelta(minutes=2)).isoformat()}
            if outcome == "overridden":
                item["overrideReason"] = {"reason": card["overrideReasons"][0], "userComment": "free text, not kept"}
            else:
                item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
            store.add_feedback(parse_feedback({"feedback": [item]}, SIGN), now + dt.timedelta(minutes=2))


def _first_reason(loaded: Any, rule_id: str) -> str:
    """The display of the rule's first override reason (the one the seeded feedback chose)."""
    rule = next(r for r in loaded.packset.all_rules() if r.id == rule_id)
    return str(rule.card.override_reasons[0][1])


@pytest.fixture()
def store(db_url: str) -> Any:
    s = Store(db_url)
    s.migrate()
    yield s
    s.engine.dispose()


def test_rule_activity_per_day_and_week(store: Store, loaded: Any) -> None:
    seed(store, loaded)
    since, until = TODAY - dt.timedelta(days=5), TODAY + dt.timedelta(days=1)
    daily = store.rule_activity(since, until, "day")
    assert len(daily["buckets"]) == 7 and daily["buckets"][0] == since.date().isoformat()
    ci05 = daily["rules"]["CI-05"]
    at = {b: i for i, b in enumerate(daily["buckets"])}

    def on(days: int) -> int:
        return at[(TODAY - dt.timedelta(days=days)).date().isoformat()]

    assert [ci05["fired"][on(d)] for d in (3, 2, 1)] == [4, 2, 2]
    assert [ci05["overridden"][on(d)] for d in (3, 2, 1)] == [3, 1, 0]
    assert [ci05["accepted"][on(d)] for d in (3, 2, 1)] == [1, 0, 0]
    assert daily["rules"]["CI-06"]["overridden"][on(1)] == 2
    weekly = store.rule_activity(since, until, "week")
    assert all(dt.date.fromisoformat(b).weekday() == 0 for b in weekly["buckets"])
    assert sum(weekly["rules"]["CI-05"]["fired"]) == 8 and sum(weekly["rules"]["CI-05"]["overridden"]) == 4


def test_the_endpoint_figures_reasons_and_errors(db_url: str, loaded: Any) -> None:
    from server import create_app

    app = create_app({"auth": "disabled", "database_url": db_url, "reload_interval": 0})
    try:
        seed(app.extensions["protocol_engine"]["store"], loaded)
        client = app.test_client()
        since = (TODAY - dt.timedelta(days=6)).date().isoformat()
        data = client.get(f"/analytics/data?since={since}&until={TODAY.date().isoformat()}").get_json()
        assert len(data["buckets"]) == 7 and data["bucket"] == "day"
        ci05 = next(r for r in data["rules"] if r["rule"] == "CI-05")
        assert (ci05["fired"], ci05["accepted"], ci05["overridden"], ci05["overrideRate"]) == (8, 1, 4, 50.0)
        assert ci05["title"].startswith("Severe hypertension") and ci05["indicator"] == "critical"
        assert ci05["reasons"] == [{"reason": _first_reason(loaded, "CI-05"), "count": 4}]
        rates = [r for r in ci05["series"]["overrideRate"] if r is not None]
        assert rates == [75.0, 50.0, 0.0]
        assert "free text" not in json.dumps(data)  # comments are never stored, so never shown
        for query, field in (("since=yesterday", "since"), ("bucket=month", "bucket"),
                             (f"since={TODAY.date().isoformat()}&until=2000-01-01", "since")):
            response = client.get("/analytics/data?" + query)
            assert response.status_code == 400 and response.get_json()["resourceType"] == "OperationOutcome"
            assert response.get_json()["issue"][0]["expression"] == [field]
    finally:
        app.extensions["protocol_engine"]["audit"].flush()
        app.extensions["protocol_engine"]["store"].engine.dispose()


def test_with_authentication_on_only_the_operator_token_opens_it(tmp_path: Path) -> None:
    from server import create_app

    base = {"auth": "required", "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0}
    apps = [create_app(base), create_app({**base, "admin_token": "s3cret-operator-token"})]
    try:
        response = apps[0].test_client().get("/analytics/data")
        assert response.status_code == 403
        assert "PROTOCOL_ENGINE_ADMIN_TOKEN" in response.get_json()["issue"][0]["diagnostics"]
        client = apps[1].test_client()
        assert client.get("/analytics/data").status_code == 401
        assert client.get("/analytics/data", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/analytics/data", headers={"Authorization": "Bearer s3cret-operator-token"})
        assert ok.status_code == 200 and ok.get_json()["rules"] == []
        page = client.get("/")
        assert page.status_code == 200  # the page itself is public; its data is not
        page.close()
    finally:
        for app in apps:
            app.extensions["protocol_engine"]["audit"].flush()
            app.extensions["protocol_engine"]["store"].engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_analytics_page_in_chromium(tmp_path: Path, loaded: Any) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    token = "operator-" + uuid.uuid4().hex
    db = f"sqlite:///{tmp_path}/pe.db"
    clients, key = _clients(tmp_path)
    env = {"PROTOCOL_ENGINE_AUTH": "required", "PROTOCOL_ENGINE_ADMIN_TOKEN": token,
           "PROTOCOL_ENGINE_CLIENTS": str(clients)}
    server = Gunicorn(tmp_path, env=env, database_url=db).start(timeout=300)  # slow when the CPU is shared
    try:
        store = Store(db)
        seed(store, loaded)  # history of the last days ...
        store.engine.dispose()
        # ... and today's cards through the running service: a real hook call and its feedback over HTTP.
        _call_and_override_today(server.base, loaded, key)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.base + "/")
            page.click("#tab-analytics")
            page.wait_for_selector("#an-token-label:not([hidden])")  # auth on: the page asks for the token
            page.fill("#an-since", (TODAY - dt.timedelta(days=6)).date().isoformat())
            page.fill("#an-token", token)
            page.click("#an-show")
            row = page.wait_for_selector("#an-table tr[data-rule='CI-05']")
            cells = [row.query_selector(f".{c}").inner_text() for c in
                     ("fired-count", "accepted-count", "overridden-count", "override-rate")]
            assert cells == ["9", "1", "5", "55.6%"], cells
            assert f"{_first_reason(loaded, 'CI-05')} (5)" in row.inner_text()
            page.wait_for_selector("#an-chart .uplot canvas")
            assert set(page.get_attribute("#an-chart", "data-series").split(",")) == {"CI-05", "CI-06"}
            legend = page.inner_text("#an-chart .u-legend")
            assert "CI-05" in legend and "CI-06" in legend
            page.select_option("#an-bucket", "week")
            page.click("#an-show")
            page.wait_for_function("document.querySelector('#an-chart .u-title')?.textContent.includes('week')")
            page.select_option("#an-bucket", "day")
            page.click("#an-show")
            page.wait_for_function("document.querySelector('#an-chart .u-title')?.textContent.includes('day')")
            (ROOT / "docs").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "docs" / "screenshot-analytics.png"), full_page=True)
            browser.close()
        assert not errors, errors
    finally:
        server.close()


def _call_and_override_today(base: str, loaded: Any, key: Any) -> None:
    """One order-sign call to the running service and an override of its CI-05 card, as an EHR sends them."""
    import time

    import jwt

    def bearer(path: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"iss": ISS, "aud": base + path, "exp": now + 60, "iat": now, "jti": str(uuid.uuid4())}
        return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="ES384", headers={"kid": "k1"})}

    path = f"/cds-services/{SIGN}"
    body = request_for(loaded, SIGN, {"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(195, 105)]})
    cards = httpx.post(base + path, json=body, headers=bearer(path), timeout=30).json()["cards"]
    card = next(c for c in cards if c["extension"]["protocol-engine"]["rule"] == "CI-05")
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                              "outcomeTimestamp": dt.datetime.now(dt.UTC).isoformat(),
                              "overrideReason": {"reason": card["overrideReasons"][0]}}]}
    answer = httpx.post(base + path + "/feedback", json=feedback, headers=bearer(path + "/feedback"), timeout=30)
    assert answer.status_code == 200 and answer.json()["stored"] == 1, answer.text


def _clients(tmp: Path) -> tuple[Path, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "ES384"}
    path = tmp / "clients.yaml"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": {"keys": [jwk]}}]}))
    return path, key


def test_report_and_the_analytics_page_read_the_same_dates_the_same_way() -> None:
    import datetime as dt_

    from protocol_engine.cli import report_period
    from protocol_engine.runtime.analytics import period

    now = dt_.datetime(2026, 12, 5, tzinfo=dt_.UTC)
    since, until, _ = period({"since": "2026-11-01", "until": "2026-11-30"}, now)
    assert report_period("2026-11-01", "2026-11-30", now) == (since, until)
    assert until == dt_.datetime(2026, 12, 1, tzinfo=dt_.UTC)  # the 30th is included
