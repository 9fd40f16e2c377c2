"""A real FHIR server on loopback for the fetch path: searchset Bundles, paging, recorded requests, faults."""

from __future__ import annotations

import json
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
        self.mode = "ok"  # ok | 401 | 404 | 500 | garbage | slow | outcome | hang-page
        self.delay = 5.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
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
        return 200, json.dumps(bundle).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
