"""Robustness: schema-driven and property-based fuzzing, mutated rule files, soak and fault tests.

CI-sized by default (a few thousand generated cases in total); PROTOCOL_ENGINE_FUZZ_SCALE multiplies the
example counts for the long runs reported in the README.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADULT, KETAMINE_ORDER, ROOT, Gunicorn, bp, request_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCALE = int(os.environ.get("PROTOCOL_ENGINE_FUZZ_SCALE", "1"))
SIGN = "/cds-services/ketamine-order-sign"
CONTRACT = {200, 400, 404, 405, 412, 413, 415}


def _check(response: Any) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code in CONTRACT, (response.status_code, text[:500])
    assert "Traceback" not in text and 'File "' not in text
    body = json.loads(text) if text else {}
    if response.status_code == 200:
        assert isinstance(body["cards"], list)
        for card in body["cards"]:
            assert len(card["summary"]) <= 139 and card["indicator"] in ("info", "warning", "critical")
    else:
        assert body["resourceType"] == "OperationOutcome"


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from server import create_app

    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp}/pe.db", "reload_interval": 0})
    yield app
    app.extensions["protocol_engine"]["audit"].flush()


# -- schemathesis against our own OpenAPI description -----------------------------------
def test_schemathesis_never_finds_a_server_error(fuzz_app: Any) -> None:
    import schemathesis
    from hypothesis import given as h_given

    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    failures: list[str] = []
    cases = [0]
    for operation in schema.get_all_operations():
        op = operation.ok()

        @h_given(case=op.as_strategy())
        @settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True)
        def run(case: Any) -> None:
            cases[0] += 1
            response = case.call()
            if response.status_code >= 500 or "Traceback" in response.text:
                failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")

        run()
    print(f"schemathesis: {cases[0]} cases, {len(failures)} server errors")
    assert not failures, failures[:5]


# -- hostile FHIR-shaped data ----------------------------------------------------------------
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=40), st.just("x" * 20000), st.just("9999-99-99T99:99:99Z"),
                   st.just("1900-01-01"), st.just("\u202e\u0000\ud7ff"))
json_values = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)
codes = st.sampled_from(["85354-9", "8480-6", "8462-4", "8867-4", "59408-5", "29463-7", "44261-6", "2106-3", "x"])
units = st.one_of(st.none(), st.sampled_from(["mm[Hg]", "mmHg", "kPa", "kg", "[lb_av]", "g", "%", "/min", "cm",
                                              "", "furlong", "{score}"]))


@st.composite
def hostile_observation(draw: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {"resourceType": "Observation", "id": draw(st.sampled_from(["o1", "o1", "o2", "", "x" * 70])),
                           "status": draw(st.sampled_from(["final", "amended", "preliminary", "entered-in-error",
                                                           "bogus", None]))}
    obs["code"] = draw(st.one_of(json_values, st.just({"coding": [{"system": "http://loinc.org", "code": draw(codes)}]})))
    when = draw(st.one_of(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 1, 1),
                                       timezones=st.just(dt.UTC)).map(lambda d: d.isoformat()), json_values))
    obs[draw(st.sampled_from(["effectiveDateTime", "issued", "effectiveInstant"]))] = when
    quantity = {"value": draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), json_values)),
                "unit": draw(units), "system": "http://unitsofmeasure.org", "code": draw(units)}
    obs[draw(st.sampled_from(["valueQuantity", "valueString", "valueCodeableConcept"]))] = draw(
        st.one_of(st.just(quantity), json_values))
    if draw(st.booleans()):
        obs["component"] = [{"code": {"coding": [{"system": "http://loinc.org", "code": draw(codes)}]},
                             "valueQuantity": {"value": draw(st.one_of(st.integers(-1000, 1000), json_values)),
                                               "code": draw(units), "system": "http://unitsofmeasure.org"}}
                            for _ in range(draw(st.integers(0, 3)))]
    for key, value in draw(st.dictionaries(st.sampled_from(["subject", "meta", "extension", "text", "note"]),
                                           json_values, max_size=2)).items():
        obs[key] = value
    return obs


@st.composite
def hostile_request(draw: Any, base: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    observations = draw(st.lists(hostile_observation(), max_size=8))
    body["prefetch"]["observations"]["entry"] += [{"resource": o} for o in observations]
    mutation = draw(st.sampled_from(["none", "context", "prefetch-key", "draft", "deep", "types"]))
    if mutation == "context":
        body["context"][draw(st.sampled_from(["userId", "patientId", "draftOrders"]))] = draw(json_values)
    elif mutation == "prefetch-key":
        body["prefetch"][draw(st.sampled_from(list(body["prefetch"])))] = draw(json_values)
    elif mutation == "draft":
        body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"] = draw(json_values)
    elif mutation == "deep":  # spliced in as text: Python's own json.dumps could not even write it
        body["prefetch"]["conditions"]["entry"].append({"resource": {"resourceType": "Condition",
                                                                     "code": f"__DEEP_{draw(st.integers(50, 5000))}__"}})
    elif mutation == "types":
        body[draw(st.sampled_from(["hook", "hookInstance", "context", "prefetch", "fhirServer"]))] = draw(json_values)
    return body


def test_hostile_fhir_data_never_crashes_the_service(fuzz_app: Any, loaded: Any) -> None:
    base = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(130, 80)]})
    client = fuzz_app.test_client()
    sent = [0]

    @given(body=hostile_request(base))
    @settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def run(body: dict[str, Any]) -> None:
        text = re.sub(r'"__DEEP_(\d+)__"', lambda m: '{"a":' * int(m[1]) + "1" + "}" * int(m[1]), json.dumps(body))
        sent[0] += 1
        _check(client.post(SIGN, data=text, content_type="application/json"))

    run()
    print(f"hostile FHIR data: {sent[0]} requests")


def test_ten_thousand_entry_bundles_and_duplicate_ids(fuzz_app: Any, loaded: Any) -> None:
    given_items = [bp(120 + i % 30, 70 + i % 20, at=f"-{i + 1}h", id="dup") for i in range(10_000)]
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER, "given": given_items})
    response = fuzz_app.test_client().post(SIGN, data=json.dumps(body), content_type="application/json")
    _check(response)


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b"\"x\"", b"{", b"\xff\xfe", b"{\"hook\": " + b"[" * 100000,
                                 b"1e999999", b"{\"hook\":\"order-sign\",\"hookInstance\":1,\"context\":{}}"])
def test_garbage_bodies_get_contract_answers(fuzz_app: Any, raw: bytes) -> None:
    _check(fuzz_app.test_client().post(SIGN, data=raw, content_type="application/json"))


def test_a_wrong_value_gives_a_data_quality_card_not_a_wrong_clinical_card(fuzz_app: Any, loaded: Any) -> None:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER, "given": [
        bp(190, 120, unit="furlong"), {"observation": "LOINC#8867-4", "value": "180 cm", "at": "-10m"}]})
    cards = fuzz_app.test_client().post(SIGN, json=body).json["cards"]
    rules = {c["extension"]["protocol-engine"]["rule"] for c in cards}
    assert {"MON-02", "DQ-02", "MON-01"} <= rules and not {"CI-05", "CI-06", "MON-03"} & rules


# -- mutated rule files ---------------------------------------------------------------------
def _mutations(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["delete-line", "dup-line", "indent", "char", "swap", "truncate", "junk"])
        i = rng.randrange(len(lines))
        if op == "delete-line" and len(lines) > 1:
            del lines[i]
        elif op == "dup-line":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = " " * rng.randint(1, 5) + lines[i]
        elif op == "char" and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + rng.choice(":{}[]$#-'\"&*!|>%@`\t\x00") + lines[i][j + 1:]
        elif op == "swap":
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "truncate":
            lines = lines[: max(1, i)]
        elif op == "junk":
            lines.insert(i, rng.choice(["when: 12", "card: null", "settings: {x: {unit: y}}", "- - -", "? ?",
                                        "rule: CI-05", "hooks: [bogus]", "  - {fact: course, since_last: {lt: 5x}}"]))
    return "\n".join(lines) + "\n"


def _mutated(pack: Path, count: int, seed: int, restored: Callable[[], Any] | None = None) -> Iterator[Path]:
    """Mutate one rule file of the pack at a time, `count` times; each is restored (then `restored()` is
    called) after the caller's check."""
    rules = sorted(pack.rglob("*.rule.yaml"))
    originals = {p: p.read_text() for p in rules}
    rng = random.Random(seed)
    for _ in range(count):
        target = rng.choice(rules)
        target.write_text(_mutations(originals[target], rng))
        try:
            yield target
        finally:
            target.write_text(originals[target])
            if restored is not None:
                restored()


@pytest.mark.timeout(900)  # 150 pack loads: about a minute on an idle machine, several on a busy shared CI runner
def test_mutated_rule_files_never_crash_validate(tmp_path: Path) -> None:
    from protocol_engine.pack.packset import load_packset

    pack = tmp_path / "rules" / "ketamine"
    shutil.copytree(ROOT / "rules" / "ketamine", pack)
    refused = 0
    for _ in _mutated(pack, 150 * SCALE, seed=1234):
        packset, diags = load_packset(pack)  # never raises
        if packset is None:
            refused += 1
            for d in diags:
                assert d.line >= 1 and d.col >= 1 and d.code and d.render()
    print(f"mutated rule files: {150 * SCALE} mutations, {refused} refused with diagnostics")
    assert refused > 50


def test_mutated_rule_files_never_take_a_running_service_down(tmp_path: Path, loaded: Any) -> None:
    """Each mutation is dropped into a live service's rules and reloaded: refused ones leave the
    service answering from the last good set; accepted ones (harmless edits) still answer by contract."""
    from server import create_app

    rules_root = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules_root)
    app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0,
                      "rules": str(rules_root)})
    registry = app.extensions["protocol_engine"]["registry"]
    client = app.test_client()
    body = json.dumps(request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                                  "given": [bp(182, 112)]}))
    refused = 0
    for _ in _mutated(rules_root / "ketamine", 15 * SCALE, seed=99, restored=registry.reload):
        good = registry.current.packset.revision
        if not registry.reload():
            refused += 1
            assert registry.current.packset.revision == good and registry.last_errors
        response = client.post(SIGN, data=body, content_type="application/json")
        _check(response)
        if registry.current.packset.revision == good:
            assert any(c["indicator"] == "critical" for c in response.json["cards"])
    app.extensions["protocol_engine"]["audit"].flush()
    print(f"mutated rule files reloaded into a live service: {15 * SCALE} mutations, {refused} refused")
    assert refused > 5


# -- soak, load and faults against real gunicorn ------------------------------------------


@pytest.mark.slow
def test_soak_with_feedback_and_a_worker_killed_under_load(tmp_path: Path, loaded: Any) -> None:
    from protocol_engine.runtime.store import Feedback, Store

    server = Gunicorn(tmp_path).start()
    base = server.base
    seconds = 12.0 * SCALE
    body = json.dumps(request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                                  "given": [bp(172, 104)]}))
    stats = {"ok": 0, "errors": 0, "in_flight_lost": 0}
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        n = 0
        with httpx.Client(base_url=base, timeout=10, headers={"Content-Type": "application/json"}) as http:
            while not stop.is_set():
                try:
                    response = http.post(SIGN, content=body)
                except httpx.TransportError:
                    with lock:
                        stats["in_flight_lost"] += 1  # the killed worker's open connection
                    continue
                if response.status_code != 200:
                    with lock:
                        stats["errors"] += 1
                    continue
                card = response.json()["cards"][0]
                stamp = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=index * 10**6 + n))
                n += 1
                item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp.isoformat(),
                        "overrideReason": {"reason": card["overrideReasons"][0]}}
                for _ in range(20):  # the trace is written off the request path; retry until the card is known
                    try:
                        fb = http.post(SIGN + "/feedback", json={"feedback": [item]})
                    except httpx.TransportError:
                        continue
                    if fb.status_code == 200:
                        with lock:
                            acknowledged.append(stamp.isoformat())
                            stats["ok"] += 1
                        break
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(seconds / 4)
    workers = server.worker_pids()
    assert len(workers) == 2, server.log_tail()
    survivor = workers[1]
    rss_before = server.rss_kib(survivor)
    time.sleep(seconds / 4)
    os.kill(workers[0], signal.SIGKILL)  # a worker dies under load; gunicorn replaces it
    time.sleep(seconds / 2)
    rss_after = server.rss_kib(survivor)
    stop.set()
    for t in threads:
        t.join(30)
    try:
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200  # recovered without a restart
        store = Store(server.env["PROTOCOL_ENGINE_DATABASE_URL"])
        with store.session() as s:
            stored = {f.outcome_timestamp.astimezone(dt.UTC).isoformat() for f in s.query(Feedback).all()}
        store.engine.dispose()
        assert stats["errors"] == 0, stats
        assert stats["in_flight_lost"] <= 8, stats
        assert stats["ok"] > 50 and not [a for a in acknowledged if a not in stored]
        # Flat memory: the worker that lived through the whole run grows by less than 16 MiB in its second half.
        assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
    finally:
        server.close()
    print(f"soak: {stats}, {len(stored)} feedback rows stored, surviving worker RSS {rss_before // 1024} -> "
          f"{rss_after // 1024} MiB")
