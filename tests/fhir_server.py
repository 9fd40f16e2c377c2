"""A real FHIR server on loopback for the fetch path: searchset Bundles, paging, recorded requests, faults."""

from __future__ import annotations

import json
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FhirServer:
    def __init__(self, resources: list[dict[str, Any]], page_size: int = 2) -> None:
        self.resources = resources
        self.page_size = page_size
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"  # ok | 401 | 404 | 500 | garbage | slow | outcome | hang-page | drip | drip-head | huge
        self.delay = 5.0
        self.self_next = False  # every searchset page names itself as its next page (a paging cycle)
        self.drip_interval = 0.25  # drip: one byte per interval of a body announced as 1 MB
        self.huge_bytes = 64 * 1024 * 1024  # huge: a valid Bundle this large, streamed as fast as it is read
        self.chunked = False  # drip/huge: Transfer-Encoding chunked instead of a Content-Length
        self.sent = 0  # body bytes written in drip/huge mode (how far the reader let the server get)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._get()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _stream(self, length: int, chunks: Any) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                if server.chunked:  # no Content-Length: the reader learns the size only as bytes arrive
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if server.chunked else chunk)
                        self.wfile.flush()
                        server.sent += len(chunk)
                    if server.chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _get(self) -> None:
                server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                if server.mode == "drip":
                    def drip() -> Any:
                        for _ in range(1024 * 1024):
                            time.sleep(server.drip_interval)
                            if select.select([self.connection], [], [], 0)[0]:
                                return  # the reader hung up (EOF is readable): count it as gone at once
                            yield b" "
                    self._stream(1024 * 1024, drip())
                    return
                if server.mode == "drip-head":  # the status line and headers themselves, a byte per interval
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nX-Pad: " + b"p" * 4096
                    for i in range(len(head)):
                        time.sleep(server.drip_interval)
                        if select.select([self.connection], [], [], 0)[0]:
                            break
                        try:
                            self.wfile.write(head[i:i + 1])
                            self.wfile.flush()
                        except (BrokenPipeError, ConnectionResetError):
                            break
                        server.sent += 1
                    self.close_connection = True
                    return
                if server.mode == "huge":
                    head, tail = b'{"resourceType": "Bundle", "type": "searchset", "x": "', b'"}'
                    block = b"x" * 65536
                    count = (server.huge_bytes - len(head) - len(tail)) // len(block)
                    self._stream(len(head) + count * len(block) + len(tail),
                                 [head, *(block for _ in range(count)), tail])
                    return
                status, body = server.answer(self.path)
                if status == -1:
                    time.sleep(server.delay)
                    status, body = 200, json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, raw_path: str) -> tuple[int, bytes]:
        if self.mode in ("401", "404", "500"):
            return int(self.mode), json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "exception"}]}).encode()
        if self.mode == "garbage":
            return 200, b"<html>not json"
        if self.mode == "slow":
            return -1, b""
        if self.mode == "outcome":
            return 200, json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "processing"}]}).encode()
        parts = urlsplit(raw_path)
        path = parts.path.removeprefix("/fhir/")
        query = parse_qs(parts.query)
        if "/" in path:  # a read
            rtype, rid = path.split("/", 1)
            for r in self.resources:
                if r["resourceType"] == rtype and r.get("id") == rid:
                    return 200, json.dumps(r).encode()
            return 404, json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found"}]}).encode()
        matches = [r for r in self.resources if r["resourceType"] == path]
        page = int(query.get("_page", ["0"])[0])
        chunk = matches[page * self.page_size:(page + 1) * self.page_size]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                                  "entry": [{"resource": r} for r in chunk]}
        if (page + 1) * self.page_size < len(matches):
            rest = "&".join(p for p in parts.query.split("&") if not p.startswith("_page="))
            bundle["link"] = [{"relation": "next", "url": f"{self.base}/{path}?{rest}&_page={page + 1}"}]
        if self.self_next:
            bundle["link"] = [{"relation": "next", "url": f"{self.base}/{path}?{parts.query}"}]
        return 200, json.dumps(bundle).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def prefetch_resources(prefetch: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource a request's prefetch holds (Bundle entries unpacked): what a FHIR server would serve."""
    resources: list[dict[str, Any]] = []
    for value in prefetch.values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry", [])]
        elif isinstance(value, dict):
            resources.append(value)
    return resources
