"""FHIR reads for missing prefetch: an httpx client, shared, with a per-call timeout."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import httpx

MAX_BYTES = 20 * 1024 * 1024


class FetchError(Exception):
    """The FHIR server did not give a usable answer (status, timeout, garbage)."""


class FhirClient(Protocol):
    def get(self, url: str, token: str | None, timeout: float) -> dict[str, Any]: ...


class HttpxFhirClient:
    """Thread-safe; one connection pool per process."""

    def __init__(self) -> None:
        self._client = httpx.Client(headers={"Accept": "application/fhir+json"}, follow_redirects=False,
                                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        self._lock = threading.Lock()

    def get(self, url: str, token: str | None, timeout: float) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self._client.get(url, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise FetchError("timed out") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise FetchError(f"HTTP {response.status_code}")
        if len(response.content) > MAX_BYTES:
            raise FetchError("answer too large")
        try:
            data = response.json()
        except ValueError as exc:
            raise FetchError("answer is not JSON") from exc
        if not isinstance(data, dict) or "resourceType" not in data:
            raise FetchError("answer is not a FHIR resource")
        return data

    def close(self) -> None:
        self._client.close()
