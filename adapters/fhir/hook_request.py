"""CDS Hooks request JSON -> HookRequest, with per-hook context validation (400 on any breach)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from protocol_engine.core.errors import BadRequest

_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_USER_TYPES = {
    "patient-view": ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson"),
    "order-select": ("Practitioner", "PractitionerRole"),
    "order-sign": ("Practitioner", "PractitionerRole"),
    "appointment-book": ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson"),
    "encounter-start": ("Practitioner", "PractitionerRole"),
}
# Context fields per hook: (name, required, kind); kinds: id, ref, bundle, refs.
CONTEXT: dict[str, tuple[tuple[str, bool, str], ...]] = {
    "patient-view": (("userId", True, "ref"), ("patientId", True, "id"), ("encounterId", False, "id")),
    "order-select": (("userId", True, "ref"), ("patientId", True, "id"), ("encounterId", False, "id"),
                     ("selections", True, "refs"), ("draftOrders", True, "bundle")),
    "order-sign": (("userId", True, "ref"), ("patientId", True, "id"), ("encounterId", False, "id"),
                   ("draftOrders", True, "bundle")),
    "appointment-book": (("userId", True, "ref"), ("patientId", True, "id"), ("encounterId", False, "id"),
                         ("appointments", True, "bundle")),
    "encounter-start": (("userId", True, "ref"), ("patientId", True, "id"), ("encounterId", True, "id")),
}
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    prefetch: dict[str, Any]
    fhir_server: str | None = None
    access_token: str | None = field(default=None, repr=False)

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])


def parse(body: Any, expected_hook: str) -> HookRequest:
    """Validate a decoded request body against the CDS Hooks contract for `expected_hook`."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "body")
    for name in ("hook", "hookInstance", "context"):
        if name not in body:
            raise BadRequest(f"'{name}' is required", name)
    hook = body["hook"]
    if not isinstance(hook, str) or not hook:
        raise BadRequest("'hook' must be a string", "hook")
    if hook != expected_hook:
        raise BadRequest(f"this service answers the '{expected_hook}' hook, not '{hook[:40]}'", "hook")
    instance = body["hookInstance"]
    if not isinstance(instance, str) or not instance.strip() or len(instance) > 128:
        raise BadRequest("'hookInstance' must be a non-empty string (a UUID)", "hookInstance")
    context = body["context"]
    if not isinstance(context, dict):
        raise BadRequest("'context' must be an object", "context")
    _check_context(hook, context)
    prefetch = body.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise BadRequest("'prefetch' must be an object", "prefetch")
    server = body.get("fhirServer")
    auth = body.get("fhirAuthorization")
    if server is not None and (not isinstance(server, str) or not re.match(r"^https?://[^/?#]", server, re.I)):
        raise BadRequest("'fhirServer' must be an absolute http(s) URL", "fhirServer")
    if server is not None and ("?" in server or "#" in server):  # a base URL: queries and paths get appended
        raise BadRequest("'fhirServer' must be a base URL without a query or fragment", "fhirServer")
    if server is not None:  # schemes are case-insensitive (RFC 3986 3.1), as the allow-list compares them
        scheme, rest = server.split(":", 1)
        server = scheme.lower() + ":" + rest
    token = None
    if auth is not None:
        if server is None:
            raise BadRequest("'fhirAuthorization' requires 'fhirServer' (cds-r-1)", "fhirAuthorization")
        if not isinstance(auth, dict) or not isinstance(auth.get("access_token"), str):
            raise BadRequest("'fhirAuthorization.access_token' must be a string", "fhirAuthorization.access_token")
        token_type = auth.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise BadRequest("'fhirAuthorization.token_type' must be 'Bearer'", "fhirAuthorization.token_type")
        token = auth["access_token"]
    return HookRequest(hook, instance, context, prefetch, server.rstrip("/") if server else None, token)


def _check_context(hook: str, context: dict[str, Any]) -> None:
    for name, required, kind in CONTEXT.get(hook, ()):
        if name not in context or context[name] is None:
            if required:
                raise BadRequest(f"context.{name} is required for {hook}", f"context.{name}")
            continue
        value = context[name]
        where = f"context.{name}"
        if kind == "id" and not (isinstance(value, str) and _ID.match(value)):
            raise BadRequest(f"{where} must be a FHIR id", where)
        if kind == "ref":
            if not (isinstance(value, str) and _REF.match(value)):
                raise BadRequest(f"{where} must be a reference like Practitioner/123", where)
            if value.split("/", 1)[0] not in _USER_TYPES[hook]:
                raise BadRequest(f"{where} must be one of {', '.join(_USER_TYPES[hook])}", where)
        if kind == "bundle" and not (isinstance(value, dict) and value.get("resourceType") == "Bundle"):
            raise BadRequest(f"{where} must be a FHIR Bundle", where)
        if kind == "bundle" and not isinstance(value.get("entry", []), list):
            raise BadRequest(f"{where}.entry must be an array", where)
        if kind == "refs" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise BadRequest(f"{where} must be an array of references", where)
    if hook == "order-select":
        present = set()
        for entry in context["draftOrders"].get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict):
                present.add(f"{res.get('resourceType')}/{res.get('id')}")
        missing = [s for s in context["selections"] if s not in present]
        if missing:
            raise BadRequest("context.selections names orders that are not in draftOrders", "context.selections")
