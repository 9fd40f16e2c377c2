"""The service served for real: gunicorn, 2 workers, loopback HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for

pytestmark = pytest.mark.slow


def test_order_sign_over_real_http(gunicorn_server: str, loaded: Any) -> None:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    with httpx.Client(base_url=gunicorn_server, timeout=10) as http:
        discovery = http.get("/cds-services")
        assert discovery.status_code == 200 and len(discovery.json()["services"]) == 5
        for _ in range(4):  # both workers answer the same
            response = http.post("/cds-services/ketamine-order-sign", json=body)
            assert response.status_code == 200
            rules = [c["extension"]["protocol-engine"]["rule"] for c in response.json()["cards"]]
            assert rules.count("CI-05") == 1
        assert http.get("/readyz").status_code == 200
        assert "protocol_engine_requests_total" in http.get("/metrics").text


# -- issue 17 ------------------------------------------------------------------------------
def _requests_total(text: str, endpoint: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("protocol_engine_requests_total{") and f'endpoint="{endpoint}"' in line \
                and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _count_calls(base: str, calls: int = 12) -> float:
    with httpx.Client(base_url=base, timeout=10) as http:
        for _ in range(calls):  # new connections, so both workers answer some
            assert httpx.get(base + "/cds-services", timeout=10).status_code == 200
        text = http.get("/metrics").text
    return _requests_total(text, "/cds-services")


@pytest.mark.timeout(300)
def test_metrics_count_every_worker_when_gunicorn_is_started_as_a_user_does(tmp_path: Path) -> None:
    """Probe: gunicorn.conf.py imported prometheus_client before choosing its directory: /metrics was empty."""
    from conftest import Gunicorn

    temp = tmp_path / "tmp"  # gunicorn.conf.py makes its directory with tempfile, which honours TMPDIR
    temp.mkdir()
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have this pid
    orphan, alive = temp / f"protocol-engine-metrics-{dead}-x1", temp / f"protocol-engine-metrics-{os.getpid()}-x2"
    for directory in (orphan, alive):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"")
    with Gunicorn(tmp_path, preset_metrics_dir=False, env={"TMPDIR": str(temp)}) as server:
        assert _count_calls(server.base) == 12
        ours = [p for p in temp.glob("protocol-engine-metrics-*") if p not in (orphan, alive)]
        assert len(ours) == 1 and list(ours[0].glob("counter_*.db"))
        assert not orphan.exists() and alive.exists()  # a killed master's directory goes, a running one's stays
    # Probe: every start left its /tmp/protocol-engine-metrics-* directory behind after a clean stop.
    assert not ours[0].exists()
    assert list(temp.glob("protocol-engine-metrics-*")) == [alive]


@pytest.mark.timeout(300)
def test_a_preset_metrics_directory_is_cleaned_at_start(tmp_path: Path) -> None:
    from conftest import Gunicorn

    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "counter_4242.db").write_bytes(b"left by an earlier run")  # would be summed (or break /metrics)
    (preset / "notes.txt").write_text("not ours")
    with Gunicorn(tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(preset)}) as server:
        assert not (preset / "counter_4242.db").exists() and (preset / "notes.txt").exists()
        assert _count_calls(server.base, 5) == 5


@pytest.mark.timeout(300)
def test_metrics_under_serve_demo(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from conftest import ROOT, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PROTOCOL_ENGINE_DATABASE_URL"] = f"sqlite:///{tmp_path}/demo.db"
    proc = subprocess.Popen([sys.executable, "-m", "protocol_engine.cli", "serve", "--demo", "--bind",
                             f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert _count_calls(base, 6) == 6
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)


@pytest.mark.timeout(300)
def test_no_shared_control_socket(tmp_path: Path) -> None:
    """Probe: two gunicorn instances on one machine shared the default control socket path."""
    from conftest import Gunicorn

    runtime = tmp_path / "xdg"
    runtime.mkdir()
    env = {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    with Gunicorn(tmp_path / "one", env=env), Gunicorn(tmp_path / "two", env=env):
        assert not (runtime / "gunicorn.ctl").exists()
        assert not (tmp_path / ".gunicorn").exists()


@pytest.mark.timeout(300)
def test_a_chunked_body_over_the_limit_is_413(tmp_path: Path, loaded: Any) -> None:
    """Probe: chunked bodies over the limit were cut silently instead of answered 413."""
    import http.client
    import json

    from conftest import Gunicorn

    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    raw = json.dumps(body).encode()
    with Gunicorn(tmp_path, env={"PROTOCOL_ENGINE_MAX_BODY": str(len(raw))}) as server:
        for payload, expected in ((raw, 200), (raw + b" " * 10, 413), (raw + b" " * 2_000_000, 413)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            chunks = (payload[i:i + 8192] for i in range(0, len(payload), 8192))
            try:
                conn.request("POST", "/cds-services/ketamine-order-sign", body=chunks,
                             headers={"Content-Type": "application/json"}, encode_chunked=True)
                response = conn.getresponse()
                assert response.status == expected, (len(payload), response.status)
                if expected == 413:
                    assert json.loads(response.read())["resourceType"] == "OperationOutcome"
            except (ConnectionResetError, BrokenPipeError):
                assert expected == 413  # the server may stop reading an oversized body before we finish
            finally:
                conn.close()


@pytest.mark.timeout(300)
def test_gunicorn_s_own_refusals_are_operation_outcomes_and_it_believes_no_forwarded_header(tmp_path: Path) -> None:
    """Probes: gunicorn answered a request line or header over its limits with an HTML page; and it believed
    `X-Forwarded-Proto: https` (and SCRIPT_NAME) from any loopback caller, changing the accepted `aud`."""
    import json
    import socket

    from conftest import Gunicorn
    from test_security import ISS, Keys, token

    keys = Keys()
    clients = tmp_path / "clients.yaml"
    clients.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": keys.jwks()}]}))
    env = {"PROTOCOL_ENGINE_AUTH": "required", "PROTOCOL_ENGINE_CLIENTS": str(clients)}
    with Gunicorn(tmp_path, env=env) as server:
        def raw(request: bytes) -> tuple[int, str, dict[str, Any]]:
            with socket.create_connection(("127.0.0.1", server.port), 10) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            return int(lines[0].split()[1]), headers["Content-Type"], json.loads(body)

        long_line = b"GET /cds-services?" + b"x" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        big_header = b"GET /cds-services HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n"
        garbled = b"GET /cds-services HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n"
        for request, status, code in ((long_line, 414, "too-costly"), (big_header, 431, "too-costly"),
                                      (garbled, 400, "invalid")):
            got, content_type, body = raw(request)
            assert (got, content_type) == (status, "application/fhir+json"), request[:60]
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code
            assert "xxxx" not in json.dumps(body) and "yyyy" not in json.dumps(body)  # the request is not echoed

        base = server.base  # http://127.0.0.1:<port>: the URL a client on loopback calls
        as_https = base.replace("http://", "https://") + "/cds-services"
        with httpx.Client(timeout=10) as http:
            def status(aud: str, **headers: str) -> int:
                return http.get(base + "/cds-services", headers={"Authorization": f"Bearer {token(keys, aud)}",
                                                                 **headers}).status_code

            assert status(base + "/cds-services") == 200
            assert status(as_https, **{"X-Forwarded-Proto": "https"}) == 401
            assert status(base + "/cds-services", **{"X-Forwarded-Proto": "https"}) == 200
            other_port = base.rsplit(":", 1)[0] + ":9999/cds-services"
            assert status(other_port, Host="127.0.0.1:9999") == 401
            # SCRIPT_NAME from a loopback caller made /other/cds-services the app's /cds-services, called at
            # <base>/other/cds-services: another service's audience. Now the header is dropped (and the path 404s).
            mounted = http.get(base + "/other/cds-services", headers={
                "Authorization": f"Bearer {token(keys, base + '/other/cds-services')}", "SCRIPT_NAME": "/other"})
            assert mounted.status_code == 404
