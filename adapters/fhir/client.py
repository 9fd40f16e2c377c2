"""FHIR reads for missing prefetch: an httpx client, shared, bounded in bytes, time and concurrency.

Every answer is streamed: the byte cap is checked as bytes arrive (never after reading it all), and so is the
hook call's byte budget over all its fetches (ByteBudget). The call's time budget is a hard deadline: httpx's
timeouts are per socket operation (a server dripping a byte just inside the read timeout could hold a fetch
for as long as it liked, and one dripping its status line or headers was never checked at all), so every
connect, TLS handshake, read and write is given only the time left before the deadline (_DeadlineBackend).
Each FHIR server (origin) gets a bounded number of simultaneous fetches per worker, so one slow server
cannot take every fetch thread from the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import httpcore
import httpx

from .allowlist import AllowList, parse

MAX_BYTES = 20 * 1024 * 1024
INFLATE_STEP = 64 * 1024  # most bytes one decompression step may produce (a gzip bomb inflates 1000:1)
log = logging.getLogger("protocol_engine.fhir")


class FetchError(Exception):
    """The FHIR server did not give a usable answer (status, timeout, garbage). Logged, never sent to callers."""


class ByteBudget:
    """The bytes all FHIR answers of one hook call may add up to (PROTOCOL_ENGINE_FHIR_REQUEST_MAX_BYTES).

    The per-answer cap alone let one call read 20 MiB per key, per page and per Medication; shared by the
    call's fetch threads, counted as bytes arrive.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def check(self, count: int) -> None:
        if self.used + count > self.limit:
            raise FetchError(f"the call's FHIR answers would pass its budget of {self.limit} bytes")

    def take(self, count: int) -> None:
        with self._lock:
            self.used += count
            if self.used > self.limit:
                raise FetchError(f"the call's FHIR answers passed its budget of {self.limit} bytes")


class FhirClient(Protocol):
    def get(self, url: str, token: str | None, timeout: float,
            budget: ByteBudget | None = None) -> dict[str, Any]: ...


class _Deadline(threading.local):
    """The deadline of the fetch running on this thread (monotonic seconds), read by every socket operation."""

    at: float | None = None


_DEADLINE = _Deadline()


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    if _DEADLINE.at is None:
        return timeout
    left = _DEADLINE.at - time.monotonic()
    if left <= 0:
        raise error("the fetch's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the deadline of the fetch using it (kept-alive ones too)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _time_left(timeout, httpcore.ConnectTimeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _time_left(timeout, httpcore.ConnectTimeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(limits=limits, trust_env=False)
    # httpx has no public way to hand httpcore a network backend; its pool keeps one attribute for it
    # (tests/test_fetch_hardening.py fails loudly if a release renames it).
    pool = transport._pool
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return transport


def _decoded(response: httpx.Response) -> Iterator[bytes]:
    """The body as it arrives, decompressed in steps of at most INFLATE_STEP bytes: the caller's byte cap then
    stops a gzip bomb after a few steps. (httpx's own decoder inflates each network read whole: one 64 KiB read
    of a bomb is 64 MiB at once.) identity and gzip only; any other coding is refused."""
    codings = [c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if not codings:
        yield from response.iter_raw()
        return
    if codings not in (["gzip"], ["x-gzip"]):
        raise FetchError(f"unsupported Content-Encoding {','.join(codings)[:40]!r}")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for raw in response.iter_raw():
            data = raw
            while True:
                if inflater.eof:  # a second gzip member follows (allowed by RFC 1952)
                    data = inflater.unused_data + data
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    if not data:
                        break
                out = inflater.decompress(data, INFLATE_STEP)
                if out:
                    yield out
                data = inflater.unconsumed_tail
                if not data and len(out) < INFLATE_STEP and not inflater.eof:
                    break
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise FetchError("answer is not valid gzip") from exc


class HttpxFhirClient:
    """Thread-safe; one connection pool per process."""

    def __init__(self, max_bytes: int = MAX_BYTES, per_server: int = 8) -> None:
        self._client = httpx.Client(headers={"Accept": "application/fhir+json", "Accept-Encoding": "gzip"},
                                    follow_redirects=False,
                                    trust_env=False, transport=_transport(
                                        httpx.Limits(max_connections=64, max_keepalive_connections=16)))
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

    def get(self, url: str, token: str | None, timeout: float,
            budget: ByteBudget | None = None) -> dict[str, Any]:
        """GET one FHIR resource; `timeout` is the whole fetch's budget (queueing, connect and every byte)."""
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
            return self._get(url, token, deadline, budget)
        finally:
            with self._lock:
                self.busy[origin] -= 1
            slot.release()

    def _get(self, url: str, token: str | None, deadline: float, budget: ByteBudget | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timed out waiting for a fetch slot")
        body = bytearray()
        _DEADLINE.at = deadline
        try:
            with self._client.stream("GET", url, headers=headers, timeout=httpx.Timeout(remaining)) as response:
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"answer too large (Content-Length {declared})")
                if budget is not None and declared.isdigit():
                    budget.check(int(declared))  # an announced answer the call cannot afford is not read at all
                for chunk in _decoded(response):  # decompressed in bounded steps: a gzip bomb is capped as it inflates
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise FetchError(f"answer too large (over {self.max_bytes} bytes)")
                    if budget is not None:
                        budget.take(len(chunk))
                    if time.monotonic() > deadline:
                        raise FetchError("answer arrived too slowly (deadline passed mid-body)")
        except httpx.TimeoutException as exc:
            raise FetchError("timed out") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"unreachable ({type(exc).__name__})") from exc
        finally:
            _DEADLINE.at = None
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

    def __init__(self, inner: FhirClient, allowed: AllowList, budget: ByteBudget | None = None) -> None:
        self.inner = inner
        self.allowed = allowed
        self.budget = budget  # one per hook call: every fetch of the call draws on it

    def get(self, url: str, token: str | None, timeout: float,
            budget: ByteBudget | None = None) -> dict[str, Any]:
        if not self.allowed.permits(url):
            log.warning("refused to fetch from a FHIR server outside the allow-list: %s", url.split("?", 1)[0][:200])
            raise FetchError("fhirServer is not an allow-listed FHIR server")
        return self.inner.get(url, token, timeout, budget or self.budget)
