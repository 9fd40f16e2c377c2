"""The production deployment for real: Debian's nginx with the shipped site in front of gunicorn (2 workers).

Probe (issue 17): sixteen connections sending headers or a body one byte a second stopped every answer of bare
gunicorn (8 gthread threads). Behind the shipped proxy, 64 such connections are held while other callers are
answered normally.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADULT, KETAMINE_ORDER, Gunicorn, bp, free_port, request_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists(),
                                 reason="nginx not installed (.ci/run installs it)")]
SIGN = "/cds-services/ketamine-order-sign"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Nginx:
    def __init__(self, workdir: Path, upstream: str, per_ip: int = 128) -> None:
        from protocol_engine.cli import render_proxy_config

        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cert, key = _self_signed(self.dir)
        site = render_proxy_config(server_name="localhost", listen=f"127.0.0.1:{self.port}", upstream=upstream,
                                   cert=str(cert), key=str(key), per_ip=per_ip, max_body=5 * 1024 * 1024)
        (self.dir / "site.conf").write_text(site)
        temp = "\n".join(f"  {kind}_temp_path {self.dir}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                 "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log warn;\n"
            f"events {{ worker_connections 2048; }}\nhttp {{\n  access_log off;\n{temp}\n"
            f"  include {self.dir}/site.conf;\n}}\n")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.base = f"https://localhost:{self.port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("nginx did not start: " + (self.dir / "error.log").read_text(errors="replace")[-2000:])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(10)


@pytest.fixture()
def deployment(tmp_path: Path) -> Iterator[tuple[Gunicorn, Nginx]]:
    server = Gunicorn(tmp_path / "gunicorn").start(timeout=180)  # worker boot is slow on a busy CI machine
    try:
        proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{server.port}")
        try:
            yield server, proxy
        finally:
            proxy.close()
    finally:
        server.close()


class SlowClients:
    """`count` TLS connections: half send their headers one byte a second, half a body one byte a second."""

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[ssl.SSLSocket] = []
        self.pending: list[bytes] = []
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        for n in range(count):
            raw = socket.create_connection(("127.0.0.1", port), 10)
            sock = context.wrap_socket(raw, server_hostname="localhost")
            if n % 2:  # slow body: complete headers announcing 100 kB, then a byte a second
                sock.sendall(f"POST {SIGN} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             "Content-Length: 100000\r\n\r\n".encode())
                self.pending.append(b"{" + b" " * 99_999)
            else:  # slow headers
                self.pending.append(f"GET /cds-services HTTP/1.1\r\nHost: localhost\r\nX-Pad: {'a' * 500}\r\n\r\n"
                                    .encode())
            self.socks.append(sock)
        self.open = count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        while not self._stop.wait(1.0):
            open_now = 0
            for i, sock in enumerate(self.socks):
                if not self.pending[i]:
                    continue
                try:
                    sock.send(self.pending[i][:1])
                    self.pending[i] = self.pending[i][1:]
                    open_now += 1
                except OSError:
                    self.pending[i] = b""
            self.open = open_now

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


def _latencies(base: str, body: dict[str, Any], calls: int) -> list[float]:
    out = []
    with httpx.Client(base_url=base, verify=False, timeout=15) as http:
        for _ in range(calls):
            started = time.perf_counter()
            response = http.post(SIGN, json=body)
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text[:200]
    return out


def test_64_slow_clients_are_held_while_other_callers_are_answered(
        deployment: tuple[Gunicorn, Nginx], loaded: Any) -> None:
    server, proxy = deployment
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(172, 104, id="bp-1")]})
    before = _latencies(proxy.base, body, 10)
    slow = SlowClients(proxy.port, 64)
    try:
        time.sleep(2.0)  # every slow connection has started sending
        during = _latencies(proxy.base, body, 10)
        held = slow.open
    finally:
        slow.close()
    assert held == 64
    assert max(during) < 5.0  # answered normally (tests do not assert timings finer than "not stuck")
    print(f"\n64 slow connections (32 slow headers, 32 slow bodies) held by nginx; order-sign through the proxy: "
          f"median {statistics.median(before) * 1000:.0f} ms before, {statistics.median(during) * 1000:.0f} ms "
          f"(max {max(during) * 1000:.0f} ms) during")


def test_the_proxy_limits_connections_per_address_and_hides_metrics(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path / "gunicorn").start(timeout=180)
    try:
        proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{server.port}", per_ip=4)
        slow = SlowClients(proxy.port, 16)  # 8 of them slow bodies: requests in progress
        try:
            time.sleep(1.5)
            response = httpx.get(proxy.base + "/cds-services", verify=False, timeout=10)
            assert response.status_code == 429 and _outcome(response) == "throttled"
        finally:
            slow.close()
            time.sleep(0.5)
        try:
            assert httpx.get(proxy.base + "/cds-services", verify=False, timeout=10).status_code == 200
            assert httpx.get(proxy.base + "/metrics", verify=False, timeout=10).status_code == 404
            assert httpx.get(server.base + "/metrics", timeout=10).status_code == 200  # scraped on loopback
            _every_refusal_is_an_operation_outcome(proxy, server)
        finally:
            proxy.close()
    finally:
        server.close()


def _outcome(response: httpx.Response) -> str:
    """The OperationOutcome's issue code; fails on nginx's (or gunicorn's) HTML error pages."""
    assert response.headers["content-type"].startswith("application/fhir+json"), response.text[:200]
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return str(body["issue"][0]["code"])


def _tls_raw(port: int, request: bytes) -> tuple[int, str, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    content_type = next((line.split(": ", 1)[1] for line in lines[1:] if line.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), content_type, body


def _every_refusal_is_an_operation_outcome(proxy: Nginx, server: Gunicorn) -> None:
    """Probe: nginx's and gunicorn's own refusals (413, 414, header too large, 429, 502) were HTML pages."""
    import json

    with httpx.Client(base_url=proxy.base, verify=False, timeout=10) as http:
        assert _outcome(http.get("/metrics")) == "not-found"
        too_long = http.get("/cds-services?q=" + "x" * 20_000)  # over nginx's 16k header buffer
        assert too_long.status_code == 414 and _outcome(too_long) == "too-costly"
        huge_header = http.get("/cds-services", headers={"X-Big": "y" * 20_000})
        assert huge_header.status_code == 431 and _outcome(huge_header) == "too-costly"
        gunicorns = http.get("/cds-services", headers={"X-Big": "y" * 10_000})  # passes nginx, over gunicorn's
        assert gunicorns.status_code == 431 and _outcome(gunicorns) == "too-costly"
    status, content_type, body = _tls_raw(proxy.port, (
        f"POST {SIGN} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {6 * 1024 * 1024}\r\nConnection: close\r\n\r\n").encode())
    assert (status, content_type) == (413, "application/fhir+json")
    assert json.loads(body)["issue"][0]["code"] == "too-costly"
    for raw, expected in ((b"GET /cds-services HTTP/2.5\r\nHost: localhost\r\n\r\n", 505),
                          (f"POST {SIGN} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n"
                           "Connection: close\r\n\r\n".encode(), 501),
                          (b"TRACE / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 405)):
        status, content_type, body = _tls_raw(proxy.port, raw)  # probe 17b: these were nginx HTML pages
        assert (status, content_type) == (expected, "application/fhir+json"), (raw, status, body[:200])
        assert json.loads(body)["issue"][0]["code"] == "not-supported" and b"nginx" not in body
    status, content_type, body = _tls_raw(proxy.port, b"NOT-HTTP\r\n\r\n")
    assert (status, content_type) == (400, "application/fhir+json") and json.loads(body)["issue"][0]["code"] == "invalid"
    server.close()  # the upstream is down: 502 from nginx, said as the service would say it
    down = httpx.get(proxy.base + "/cds-services", verify=False, timeout=10)
    assert down.status_code == 503 and _outcome(down) == "transient" and down.headers["retry-after"] == "5"


def test_the_proxy_sets_every_forwarded_header_itself(tmp_path: Path) -> None:
    """Probe 17b: the shipped site passed a client's X-Forwarded-Port/-Host/-Prefix through; with
    PROTOCOL_ENGINE_PROXY_HOPS=1 a forged X-Forwarded-Port made another port's `aud` valid. What the upstream
    receives from the real nginx, for forged and honest requests alike."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from werkzeug.middleware.proxy_fix import ProxyFix
    from werkzeug.wrappers import Request

    seen: list[dict[str, str]] = []

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_GET(self) -> None:  # noqa: N802
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{upstream.server_address[1]}")
    try:
        forged = {"X-Forwarded-Port": "9999", "X-Forwarded-Host": "other-cds.example",
                  "X-Forwarded-Prefix": "/evil", "X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "http"}
        with httpx.Client(base_url=proxy.base, verify=False, timeout=10) as http:
            assert http.get("/cds-services", headers=forged).status_code == 200
            honest = http.get("/cds-services")
            assert honest.status_code == 200 and honest.headers["server"] == "nginx"  # server_tokens off
    finally:
        proxy.close()
        upstream.shutdown()
        upstream.server_close()
    for headers in seen:
        assert headers["x-forwarded-port"] == str(proxy.port)
        assert headers["x-forwarded-host"] == "localhost"
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert "x-forwarded-prefix" not in headers
        # what the app (ProxyFix, one hop) then believes it was called at: the genuine port, never the forged one
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": SIGN, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
                   "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1",
                   **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}}
        ProxyFix(lambda env, start: [], x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)(environ, lambda *a: None)
        assert Request(environ).base_url == f"https://localhost:{proxy.port}{SIGN}"
