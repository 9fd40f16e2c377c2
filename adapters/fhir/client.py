"""FHIR reads for missing prefetch: an httpx client, shared, bounded in bytes, time and concurrency.

Every answer is streamed: the byte cap is checked as bytes arrive (never after reading it all) and the call's
time budget is an absolute deadline checked per chunk, so a server that drips one byte a second is cut off at
the budget rather than holding a thread. Each FHIR server (origin) gets a bounded number of simultaneous
fetches per worker, so one slow server cannot take every fetch thread from the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Protocol

import httpx

from .allowlist import AllowList, parse

MAX_BYTES = 20 * 1024 * 1024
log = logging.getLogger("protocol_engine.fhir")


class FetchError(Exception):
    """The FHIR server did not give a usable answer (status, timeout, garbage). Logged, never sent to callers."""


class FhirClient(Protocol):
    def get(self, url: str, token: str | None, timeout: float) -> dict[str, Any]: ...


class HttpxFhirClient:
    """Thread-safe; one connection pool per process."""

    def __init__(self, max_bytes: int = MAX_BYTES, per_server: int = 8) -> None:
        self._client = httpx.Client(headers={"Accept": "application/fhir+json"}, follow_redirects=False,
                                    trust_env=False,
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self.max_bytes = max_bytes
        self.per_server = per_server
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
        self.busy: dict[tuple[str, str, int], int] = {}  # fetches in flight per server, and the most seen
        self.peak: dict[tuple[str, str, int], int] = {}

    def _origin(self, url: str) -> tuple[str, str, int]:
        base = parse(url)
        if base is None:
            raise FetchError("not an http(s) URL")
        return base.origin()

    def get(self, url: str, token: str | None, timeout: float) -> dict[str, Any]:
        """GET one FHIR resource; `timeout` is the whole call's budget (queueing, connect and every byte)."""
        deadline = time.monotonic() + timeout
        origin = self._origin(url)
        with self._lock:
            slot = self._slots.setdefault(origin, threading.BoundedSemaphore(self.per_server))
        if not slot.acquire(timeout=max(timeout, 0.0)):
            raise FetchError(f"more than {self.per_server} fetches already in flight to this server")
        with self._lock:
            self.busy[origin] = self.busy.get(origin, 0) + 1
            self.peak[origin] = max(self.peak.get(origin, 0), self.busy[origin])
        try:
            return self._get(url, token, deadline)
        finally:
            with self._lock:
                self.busy[origin] -= 1
            slot.release()

    def _get(self, url: str, token: str | None, deadline: float) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timed out waiting for a fetch slot")
        body = bytearray()
        try:
            with self._client.stream("GET", url, headers=headers, timeout=httpx.Timeout(remaining)) as response:
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"answer too large (Content-Length {declared})")
                for chunk in response.iter_bytes():  # decoded bytes: a gzip bomb is capped as it inflates
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise FetchError(f"answer too large (over {self.max_bytes} bytes)")
                    if time.monotonic() > deadline:
                        raise FetchError("answer arrived too slowly (deadline passed mid-body)")
        except httpx.TimeoutException as exc:
            raise FetchError("timed out") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"unreachable ({type(exc).__name__})") from exc
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise FetchError("answer is not JSON") from exc
        if not isinstance(data, dict) or "resourceType" not in data:
            raise FetchError("answer is not a FHIR resource")
        return data

    def close(self) -> None:
        self._client.close()


class AllowListedClient:
    """A FhirClient that contacts only allow-listed FHIR servers; anything else fails before any I/O."""

    def __init__(self, inner: FhirClient, allowed: AllowList) -> None:
        self.inner = inner
        self.allowed = allowed

    def get(self, url: str, token: str | None, timeout: float) -> dict[str, Any]:
        if not self.allowed.permits(url):
            log.warning("refused to fetch from a FHIR server outside the allow-list: %s", url.split("?", 1)[0][:200])
            raise FetchError("fhirServer is not an allow-listed FHIR server")
        return self.inner.get(url, token, timeout)
