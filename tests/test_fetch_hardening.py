"""Outbound fetches cannot be turned against the network: allow-lists, byte cap, deadline, per-server bound.

Each test names the probe from issue 17 it answers; all talk to real loopback servers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, free_port, request_for
from fhir_server import FhirServer, prefetch_resources

from adapters.fhir.allowlist import AllowList
from adapters.fhir.client import AllowListedClient, ByteBudget, FetchError, HttpxFhirClient

SIGN = "/cds-services/ketamine-order-sign"


def _request(loaded: Any) -> dict[str, Any]:
    return request_for(loaded, "ketamine-order-sign", {
        "patient": ADULT, "order": KETAMINE_ORDER,
        "given": [bp(186, 108, id="bp-1"), {"condition": "ICD10#F20.9 Schizophrenia"}]})


@pytest.fixture()
def fhir(loaded: Any, app: Any) -> Iterator[FhirServer]:
    body = _request(loaded)
    resources = prefetch_resources(body["prefetch"])
    server = FhirServer(resources, page_size=2)
    app.extensions["protocol_engine"]["fhir_servers"] = (server.base,)
    yield server
    server.close()


def _missing(loaded: Any, server: str, *keys: str) -> dict[str, Any]:
    body = _request(loaded)
    for key in keys or ("observations",):
        del body["prefetch"][key]
    body["fhirServer"] = server
    body["fhirAuthorization"] = {"access_token": "secret-token", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "user/*.read", "subject": "svc"}
    return body


# -- allow-list -----------------------------------------------------------------------------
def test_allow_list_compares_origin_and_path_segments_not_string_prefixes() -> None:
    allowed = AllowList(["http://127.0.0.1:1842/fhir", "ehr.example.org/R4"])
    assert allowed.permits("http://127.0.0.1:1842/fhir/Observation?patient=1")
    assert allowed.permits("http://127.0.0.1:1842/fhir")
    assert allowed.permits("https://EHR.example.org:443/R4/Patient/1")
    for url in ("http://127.0.0.1:18421/fhir/Observation",  # the string-prefix probe
                "http://127.0.0.1:1842/fhir-admin/x", "http://127.0.0.1:1842/", "http://localhost:1842/fhir",
                "http://[::1]:1842/fhir", "http://2130706433:1842/fhir", "http://0x7f.1:1842/fhir",
                "https://127.0.0.1:1842/fhir",  # another scheme is another origin
                "http://ehr.example.org/R4/Patient",  # https-only unless the entry says http
                "https://ehr.example.org/R4/../admin", "https://ehr.example.org/R4/%2e%2e/admin",
                "https://user:pw@ehr.example.org/R4", "https://ehr.example.org.evil.example/R4",
                "file:///etc/passwd", "ftp://ehr.example.org/R4", "", "https:///R4"):
        assert not allowed.permits(url), url
    with pytest.raises(ValueError):
        AllowList(["ftp://x/fhir"])


@pytest.mark.parametrize("named", ["other-port", "loopback-v6", "decimal-ip", "string-prefix-port", "path-prefix"])
def test_a_fhir_server_outside_the_allow_list_is_never_contacted(
        client: Any, loaded: Any, fhir: FhirServer, named: str, caplog: pytest.LogCaptureFixture) -> None:
    """Probe: any caller made the service GET any URL it named, and send the access token there."""
    port = int(fhir.base.split(":")[2].split("/")[0])
    urls = {"other-port": f"http://127.0.0.1:{free_port()}/fhir", "loopback-v6": f"http://[::1]:{port}/fhir",
            "decimal-ip": f"http://2130706433:{port}/fhir", "string-prefix-port": f"http://127.0.0.1:{port}1/fhir",
            "path-prefix": f"http://127.0.0.1:{port}/fhir-internal"}
    caplog.set_level(logging.WARNING)
    response = client.post(SIGN, json=_missing(loaded, urls[named]))
    assert response.status_code == 412
    assert fhir.requests == []
    diagnostics = response.json["issue"][0]["diagnostics"]
    assert diagnostics == "required data unavailable for prefetch key(s) observations: could not be fetched " \
                          "from fhirServer"
    assert any("allow-list" in r.getMessage() for r in caplog.records)  # the detail is in the log only
    assert "secret-token" not in caplog.text


def test_the_412_text_does_not_tell_reachable_from_unreachable(client: Any, loaded: Any, fhir: FhirServer) -> None:
    """Probe: the 412 text told which hosts and ports answered."""
    texts = set()
    for mode in ("404", "500", "garbage"):
        fhir.mode = mode
        texts.add(client.post(SIGN, json=_missing(loaded, fhir.base)).json["issue"][0]["diagnostics"])
    fhir.close()  # now nothing listens there
    texts.add(client.post(SIGN, json=_missing(loaded, fhir.base)).json["issue"][0]["diagnostics"])
    assert len(texts) == 1


def test_an_allow_listed_server_is_fetched_from(client: Any, loaded: Any, fhir: FhirServer) -> None:
    response = client.post(SIGN, json=_missing(loaded, fhir.base, "observations", "conditions"))
    assert response.status_code == 200
    assert {r["path"].split("?")[0] for r in fhir.requests} == {"/fhir/Observation", "/fhir/Condition"}


def test_a_paging_link_to_a_port_sharing_the_prefix_is_not_followed(
        client: Any, loaded: Any, fhir: FhirServer) -> None:
    """Probe: the next-link check was a string prefix (`http://host:1842` accepted `http://host:18421`)."""
    decoy = FhirServer([], page_size=2)
    try:
        body = _request(loaded)
        body["fhirServer"] = fhir.base
        port = fhir.base.split(":")[2].split("/")[0]
        # a link that string-starts with fhirServer but is another port: ours is 5 digits, so append one
        body["prefetch"]["conditions"]["link"] = [{"relation": "next",
                                                   "url": f"http://127.0.0.1:{port}0/fhir/Condition?p=2"}]
        assert client.post(SIGN, json=body).status_code == 412
        body["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": f"{decoy.base}/Condition?p=2"}]
        assert client.post(SIGN, json=body).status_code == 412
        assert decoy.requests == [] and fhir.requests == []
        body["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": "Condition?patient=p&_page=1"}]
        assert client.post(SIGN, json=body).status_code == 200  # relative links resolve against fhirServer
    finally:
        decoy.close()


def test_with_authentication_each_client_has_its_own_allow_list(tmp_path: Any, loaded: Any) -> None:
    from protocol_engine.runtime.security import load_clients

    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n  - iss: https://a.example\n    jwks: {keys: []}\n"
                    "    fhir_servers: [https://fhir.a.example/R4, 'http://127.0.0.1:8080/fhir']\n"
                    "  - iss: https://b.example\n    jwks: {keys: []}\n")
    clients = load_clients(path)
    assert clients["https://a.example"].fhir_servers == ("https://fhir.a.example/R4", "http://127.0.0.1:8080/fhir")
    assert clients["https://b.example"].fhir_servers == ()
    path.write_text("clients:\n  - iss: https://a.example\n    jwks: {keys: []}\n    fhir_servers: [gopher://x]\n")
    with pytest.raises(ValueError, match="allow-list"):
        load_clients(path)


def test_demo_start_allows_no_fhir_server_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocol_engine.runtime.config import load_settings

    monkeypatch.delenv("PROTOCOL_ENGINE_FHIR_SERVERS", raising=False)
    assert load_settings({"auth": "disabled"}).fhir_servers == ()
    monkeypatch.setenv("PROTOCOL_ENGINE_FHIR_SERVERS", "https://a.example/fhir, http://127.0.0.1:9/fhir")
    assert load_settings().fhir_servers == ("https://a.example/fhir", "http://127.0.0.1:9/fhir")


# -- byte cap, deadline, per-server bound ---------------------------------------------------
def test_a_huge_answer_is_cut_at_the_cap_as_it_streams(loaded: Any) -> None:
    """Probe: a 400 MiB answer was read whole before the 20 MiB cap was checked (worker 121 -> 922 MiB)."""
    server = FhirServer([])
    server.mode, server.huge_bytes = "huge", 200 * 1024 * 1024
    client = HttpxFhirClient(max_bytes=2 * 1024 * 1024)
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match="too large"):
            client.get(server.base + "/Observation?patient=p", None, 10.0)
        elapsed = time.monotonic() - started
        time.sleep(0.2)
        # the server could only push what fits in the cap plus socket buffers, not the 200 MiB
        assert server.sent < 20 * 1024 * 1024, server.sent
        print(f"\nbyte cap 2 MiB: refused after {elapsed * 1000:.0f} ms; server got {server.sent / 2**20:.1f} MiB "
              "of 200 MiB out before the connection closed")
        server.mode, server.huge_bytes = "huge", 1024 * 1024
        assert client.get(server.base + "/Observation", None, 10.0)["resourceType"] == "Bundle"  # under the cap
    finally:
        client.close()
        server.close()


def test_a_dripping_server_is_cut_off_at_the_deadline(loaded: Any) -> None:
    """Probe: one byte a second defeated the per-read timeout; the fetch held a thread for 45 s."""
    server = FhirServer([])
    server.mode, server.drip_interval = "drip", 0.1  # every read is well inside any read timeout
    client = HttpxFhirClient()
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match="too slowly|timed out"):
            client.get(server.base + "/Observation?patient=p", None, 1.0)
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, elapsed
        print(f"\ndrip (1 byte / 100 ms), 1 s budget: cut off after {elapsed * 1000:.0f} ms, {server.sent} bytes read")
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize(("mode", "interval"), [("drip", 0.9), ("drip-head", 0.3)])
def test_a_fetch_ends_at_its_deadline_however_the_server_drips(mode: str, interval: float) -> None:
    """Probe: the 3 s deadline overran to 4-6 s. httpx's timeouts are per read: a byte every 0.9 s against a
    1 s budget was read until the check after the next chunk (1.8 s), and a status line and headers dripped
    a byte at a time were never checked against the deadline at all (4 kB at 0.3 s a byte: 20 minutes)."""
    server = FhirServer([])
    server.mode, server.drip_interval = mode, interval
    client = HttpxFhirClient()
    try:
        for _ in range(2):  # the second fetch may reuse the kept-alive connection: it is bounded too
            started = time.monotonic()
            with pytest.raises(FetchError, match="timed out|too slowly"):
                client.get(server.base + "/Observation?patient=p", None, 1.0)
            elapsed = time.monotonic() - started
            assert elapsed < 1.4, elapsed  # the budget plus scheduling noise, not plus another read
        print(f"\n{mode} (a byte every {interval} s), 1 s budget: ended after {elapsed * 1000:.0f} ms")
    finally:
        client.close()
        server.close()


def test_a_call_s_fetch_threads_are_free_when_its_deadline_passes(tmp_path: Any, loaded: Any) -> None:
    """The 412 came at the deadline, but the call's fetch threads went on reading a dripping server, holding
    its per-server slots (and pool threads) from the calls that came next."""
    from server import create_app

    drip = FhirServer([])
    drip.mode, drip.drip_interval = "drip-head", 0.3
    app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0,
                      "fhir_servers": drip.base, "request_deadline": 1.0, "fhir_timeout": 1.0})
    try:
        started = time.monotonic()
        response = app.test_client().post(SIGN, json=_missing(loaded, drip.base, "observations", "conditions"))
        took = time.monotonic() - started
        assert response.status_code == 412
        assert response.get_json()["issue"][0]["expression"][0] in ("observations", "conditions")
        fetcher = app.extensions["protocol_engine"]["fhir_client"]
        port = drip.httpd.server_address[1]
        busy_until = time.monotonic() + 2.0
        while time.monotonic() < busy_until and any(n for o, n in fetcher.busy.items() if o[2] == port):
            time.sleep(0.02)
        freed = time.monotonic() - started
        assert not any(n for o, n in fetcher.busy.items() if o[2] == port)
        assert freed < 1.6, freed
        print(f"\nheaders dripped, 1 s request deadline: 412 after {took * 1000:.0f} ms, "
              f"fetch threads free after {freed * 1000:.0f} ms")
    finally:
        app.extensions["protocol_engine"]["audit"].flush()
        drip.close()


def test_one_call_s_fetches_share_a_byte_budget(loaded: Any) -> None:
    """Probe: the 20 MiB cap was per answer; a call read 20 MiB per key, per page and per Medication."""
    server = FhirServer([])
    server.mode, server.huge_bytes = "huge", 1024 * 1024
    inner = HttpxFhirClient(max_bytes=2 * 1024 * 1024)
    url = server.base + "/Observation?patient=p"
    try:
        call = AllowListedClient(inner, AllowList([server.base]), ByteBudget(int(2.5 * 1024 * 1024)))
        assert call.get(url, None, 10.0)["resourceType"] == "Bundle"
        assert call.get(url, None, 10.0)["resourceType"] == "Bundle"  # 2 MiB of the 2.5 MiB
        with pytest.raises(FetchError, match="budget"):
            call.get(url, None, 10.0)
        sent = server.sent
        assert sent < 4 * 1024 * 1024, sent  # the third answer was refused on its Content-Length, not read whole
        server.chunked, server.sent = True, 0  # no Content-Length to refuse up front: cut as the bytes arrive
        streamed = AllowListedClient(inner, AllowList([server.base]), ByteBudget(int(2.5 * 1024 * 1024)))
        assert streamed.get(url, None, 10.0)["resourceType"] == "Bundle"
        assert streamed.get(url, None, 10.0)["resourceType"] == "Bundle"
        with pytest.raises(FetchError, match="budget"):
            streamed.get(url, None, 10.0)
        assert streamed.budget is not None and streamed.budget.used <= int(2.5 * 1024 * 1024) + 65536 + 1024
        assert server.sent < 3.5 * 1024 * 1024, server.sent
        fresh = AllowListedClient(inner, AllowList([server.base]), ByteBudget(int(2.5 * 1024 * 1024)))
        assert fresh.get(url, None, 10.0)["resourceType"] == "Bundle"  # the budget is per call, not per client
    finally:
        inner.close()
        server.close()


def test_a_call_over_its_fhir_byte_budget_is_412_naming_the_keys(tmp_path: Any, loaded: Any) -> None:
    from server import create_app

    body = _request(loaded)
    resources = prefetch_resources(body["prefetch"])
    fhir = FhirServer(resources, page_size=50)
    padding = {"resourceType": "Observation", "id": "pad", "status": "final", "subject": {"reference": "Patient/x"},
               "code": {"text": "x" * 40_000}}  # another patient's: fetched, then not used
    fhir.resources.append(padding)
    apps = []
    try:
        statuses = {}
        for budget in (32 * 1024 * 1024, 20_000):
            app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/{budget}.db",
                              "reload_interval": 0, "fhir_servers": fhir.base, "fhir_request_max_bytes": budget})
            apps.append(app)
            response = app.test_client().post(SIGN, json=_missing(loaded, fhir.base, "observations", "conditions"))
            statuses[budget] = response.status_code
            if response.status_code == 412:
                outcome = response.get_json()
                assert outcome["resourceType"] == "OperationOutcome"
                assert set(outcome["issue"][0]["expression"]) <= {"observations", "conditions"}
                assert "budget" not in response.get_data(as_text=True)  # what went wrong is in the log only
        assert statuses == {32 * 1024 * 1024: 200, 20_000: 412}
    finally:
        for app in apps:
            app.extensions["protocol_engine"]["audit"].flush()
        fhir.close()


def test_dripping_servers_do_not_starve_honest_requests(app: Any, client: Any, loaded: Any, fhir: FhirServer) -> None:
    """Probe: twelve drip requests exhausted the shared fetch pool; honest requests got 412 for ~45 s."""
    drip = FhirServer([])
    drip.mode, drip.drip_interval = "drip", 0.2
    app.extensions["protocol_engine"]["fhir_servers"] = (fhir.base, drip.base)
    try:
        bad = [threading.Thread(target=lambda: client.post(SIGN, json=_missing(
            loaded, drip.base, "observations", "conditions", "medicationRequests", "allergies"))) for _ in range(12)]
        for t in bad:
            t.start()
        time.sleep(0.5)
        started = time.monotonic()
        honest = app.test_client().post(SIGN, json=_missing(loaded, fhir.base, "observations", "conditions"))
        took = time.monotonic() - started
        for t in bad:
            t.join(20)
        assert honest.status_code == 200
        settings = app.extensions["protocol_engine"]["settings"]
        fetcher = app.extensions["protocol_engine"]["fhir_client"]
        peak = max(n for origin, n in fetcher.peak.items() if origin[2] == drip.httpd.server_address[1])
        assert peak == settings.fhir_concurrency
        print(f"\n12 requests to a dripping server in flight: honest request 200 in {took * 1000:.0f} ms; "
              f"at most {peak} fetches at once to the dripping server")
    finally:
        drip.close()


def test_fetches_to_one_server_are_bounded(loaded: Any) -> None:
    server = FhirServer([])
    server.mode, server.delay = "slow", 0.5
    client = HttpxFhirClient(per_server=3)
    try:
        threads = [threading.Thread(target=lambda: client.get(server.base + "/Patient/x", None, 5.0))
                   for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert server.max_in_flight == 3 and max(client.peak.values()) == 3
        assert len(server.requests) == 10  # queued within their budget, not refused
    finally:
        client.close()
        server.close()


def test_a_paging_cycle_is_not_followed(client: Any, loaded: Any, fhir: FhirServer) -> None:
    """Probe 17/next-c: a searchset whose next link pointed back to itself was fetched again and again."""
    body = _request(loaded)
    body["fhirServer"] = fhir.base
    body["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": "Condition?patient=p&_page=1"}]
    fhir.self_next = True
    assert client.post(SIGN, json=body).status_code == 412
    assert len(fhir.requests) == 1, fhir.requests  # the page naming itself again is not fetched a second time


@pytest.mark.parametrize("suffix", ["?x=1", "#frag", "/?x=1"])
def test_a_fhir_server_with_a_query_or_fragment_is_400(client: Any, loaded: Any, fhir: FhirServer,
                                                       suffix: str) -> None:
    """Probe 17: `fhirServer` `.../fhir?x=1` was accepted and paths were appended after the query."""
    body = _request(loaded)
    body["fhirServer"] = fhir.base + suffix
    response = client.post(SIGN, json=body)
    assert response.status_code == 400 and response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["expression"] == ["fhirServer"] and fhir.requests == []


def test_an_upper_case_scheme_is_the_same_fhir_server(client: Any, loaded: Any, fhir: FhirServer) -> None:
    """Schemes are case-insensitive: `HTTP://127.0.0.1:p/fhir` is the allow-listed server, fetched as usual."""
    body = _request(loaded)
    body["fhirServer"] = "HTTP" + fhir.base.removeprefix("http")
    del body["prefetch"]["conditions"]
    assert client.post(SIGN, json=body).status_code == 200
    assert [r["path"].split("?")[0] for r in fhir.requests] == ["/fhir/Condition"]
