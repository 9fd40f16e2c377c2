"""gzip FHIR answers decompressed in bounded steps (probe 17b item 3: a 300 KB gzip bomb raised worker memory by
64-129 MiB per call although the decompressed-size cap worked: httpx inflates each network read whole)."""

from __future__ import annotations

import gzip
import json
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from adapters.fhir.client import FetchError, HttpxFhirClient

PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-02-03", "gender": "female"}
BOMB = gzip.compress(b'{"resourceType": "Bundle", "entry": [' + b" " * (300 * 1024 * 1024), 9)  # ~300 KB


class Server:
    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802
                kind = self.path.strip("/")
                encoding = "gzip"
                if kind == "bomb":
                    body = BOMB
                elif kind == "two-members":
                    text = json.dumps(PATIENT).encode()
                    body = gzip.compress(text[:10]) + gzip.compress(text[10:])
                elif kind == "brotli":
                    body, encoding = b"\x0b\x02\x80{}\x03", "br"
                else:
                    body = gzip.compress(json.dumps(PATIENT).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_gzip_answers_are_read(server: Server) -> None:
    client = HttpxFhirClient(max_bytes=1024 * 1024)
    try:
        assert client.get(server.base + "/plain", None, 5.0) == PATIENT
        assert client.get(server.base + "/two-members", None, 5.0) == PATIENT
        with pytest.raises(FetchError, match="Content-Encoding"):
            client.get(server.base + "/brotli", None, 5.0)
    finally:
        client.close()


def test_a_gzip_bomb_is_stopped_at_the_cap_without_inflating_it(server: Server) -> None:
    cap = 1024 * 1024
    client = HttpxFhirClient(max_bytes=cap)
    try:
        client.get(server.base + "/plain", None, 5.0)  # connection pool and imports warmed outside the measurement
        tracemalloc.start()
        with pytest.raises(FetchError, match="too large"):
            client.get(server.base + "/bomb", None, 10.0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        client.close()
    print(f"\ngzip bomb ({len(BOMB) // 1024} KiB, 300 MiB inflated), cap {cap // 1024} KiB: "
          f"tracemalloc peak {peak / 2**20:.1f} MiB")
    assert peak < cap + 3 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held for a bomb capped at 1 MiB"
