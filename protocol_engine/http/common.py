"""What every view shares: OperationOutcome answers, JSON request bodies, and the service's state on the app."""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Response, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from adapters.fhir.allowlist import AllowList
from adapters.fhir.client import AllowListedClient, ByteBudget

from ..core.errors import BadRequest
from ..runtime.audit import AuditWriter
from ..runtime.config import Settings
from ..runtime.outcome import operation_outcome
from ..runtime.registry import Loaded, Registry
from ..runtime.store import Store
from . import jsonio

log = logging.getLogger("protocol_engine.http")
JSON_TYPES = ("application/json", "application/fhir+json")


class Unsupported(Exception):
    """The body is not JSON (415)."""


def outcome(status: int, code: str, message: str, field: str | None = None) -> Response:
    response = jsonify(operation_outcome(code, message, [field] if field else None))
    response.status_code = status
    response.headers["Content-Type"] = "application/fhir+json"
    return response


def _raw_body() -> bytes:
    limit = request.max_content_length
    if request.content_length is None and limit is not None and request.environ.get("wsgi.input_terminated"):
        # A chunked body has no Content-Length for Werkzeug to refuse up front, and its limited stream stops
        # at the limit without saying so: read one byte past it to tell "exactly the limit" from "cut".
        raw = request.environ["wsgi.input"].read(limit + 1)
        if len(raw) > limit:
            raise RequestEntityTooLarge()
        return bytes(raw)
    return request.get_data(cache=False)


def body() -> Any:
    mime = (request.mimetype or "").lower()
    if mime not in JSON_TYPES:
        raise Unsupported()
    raw = _raw_body()
    try:
        return jsonio.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("the body is not valid JSON", "body") from exc


def state() -> dict[str, Any]:
    """What create_app built for this service (rules, store, audit, settings, verifier, FHIR client)."""
    found: dict[str, Any] = current_app.extensions["protocol_engine"]
    return found


def settings() -> Settings:
    return cast(Settings, state()["settings"])


def registry() -> Registry:
    return cast(Registry, state()["registry"])


def store() -> Store:
    return cast(Store, state()["store"])


def audit() -> AuditWriter:
    return cast(AuditWriter, state()["audit"])


def current() -> Loaded:
    """The rule set for this caller: its tenant's site settings when the clients file gives it some."""
    return registry().current.for_tenant((g.get("claims") or {}).get("tenant"))


def fhir_client() -> AllowListedClient:
    """The fetcher for this call: only the FHIR servers its caller is allowed to name, within its byte budget."""
    service = state()
    verifier = service["verifier"]
    if verifier is not None:
        caller = verifier.clients.get(str(g.claims.get("iss"))) if "claims" in g else None
        entries = caller.fhir_servers if caller else ()
    else:
        entries = service["fhir_servers"]
    return AllowListedClient(service["fhir_client"], AllowList(entries),
                             ByteBudget(settings().fhir_request_max_bytes))
