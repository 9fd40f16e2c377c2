"""Prefetch templates, and resolving a request's prefetch: null / absent / OperationOutcome / paging.

Templates use only `{{context.patientId}}` (a Tok field of every hook we serve) and, for encounter-start,
`{{context.encounterId}}` (a Tok field of that hook), so they are valid CDS Hooks 2.0 templates. 2.0 has
no date token, so the templates are bounded by code instead, and a fetch this service makes itself adds a
date bound computed from `now`.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin

from protocol_engine.core.errors import PrefetchUnavailable

from . import allowlist
from .client import FetchError, FhirClient
from .hook_request import HookRequest

# resource type -> (prefetch key, template, date search parameter)
TEMPLATES: dict[str, tuple[str, str, str | None]] = {
    "Patient": ("patient", "Patient/{{context.patientId}}", None),
    "Observation": ("observations", "Observation?patient={{context.patientId}}", "date"),
    "Condition": ("conditions", "Condition?patient={{context.patientId}}", None),
    "MedicationRequest": ("medicationRequests", "MedicationRequest?patient={{context.patientId}}", None),
    "MedicationStatement": ("medicationStatements", "MedicationStatement?patient={{context.patientId}}", None),
    "MedicationAdministration": ("medicationAdministrations",
                                 "MedicationAdministration?patient={{context.patientId}}", "effective-time"),
    "AllergyIntolerance": ("allergies", "AllergyIntolerance?patient={{context.patientId}}", None),
    # encounter-start's anchor: the encounter that is starting (its period.start is the moment of the session)
    "Encounter": ("encounter", "Encounter/{{context.encounterId}}", None),
}
# The same table read the other way: prefetch key -> resource type.
TYPE_OF_KEY: dict[str, str] = {key: rtype for rtype, (key, _, _) in TEMPLATES.items()}
_TOKEN = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
ALLOWED_TOKENS = ("userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId")
MAX_PAGES = 50
# Every fetch is bounded by its deadline and each server by HttpxFhirClient.per_server, so threads come back soon;
# the pool is larger than 4 request threads x every key so a fetch never queues behind another request's.
_POOL = ThreadPoolExecutor(max_workers=48, thread_name_prefix="fhir-fetch")


def templates_for(resource_types: set[str], codes: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Discovery prefetch templates for the resource types a service's rules read."""
    out: dict[str, str] = {}
    for rtype in sorted(resource_types):
        if rtype not in TEMPLATES:
            continue
        key, template, _ = TEMPLATES[rtype]
        if codes and codes.get(rtype):
            template += "&code=" + ",".join(codes[rtype])
        out[key] = template
    return out


def template_problems(template: str, context_tokens: set[str]) -> list[str]:
    """Breaches of the CDS Hooks 2.0 prefetch token rules."""
    problems = []
    for token in _TOKEN.findall(template):
        if token in ALLOWED_TOKENS:
            continue
        if not token.startswith("context."):
            problems.append(f"token '{token}' is neither context.* nor a user token")
        elif token[len("context."):] not in context_tokens or "." in token[len("context."):]:
            problems.append(f"token '{token}' is not a prefetch token of this hook")
    if "sort:desc" in template:
        problems.append("'sort:desc' is not FHIR search syntax; use _sort=-date")
    return problems


def render_template(template: str, request: HookRequest) -> str:
    def sub(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            return quote(str(request.context.get(token[8:], "")), safe="/")
        return ""

    return _TOKEN.sub(sub, template)


@dataclass
class Resolved:
    payloads: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # key -> prefetch | fetched | null


def _is_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _error_entry(bundle: dict[str, Any]) -> bool:
    """A searchset entry that is an OperationOutcome with an error or fatal issue: the search is incomplete.

    (Servers put warnings, e.g. "unknown parameter ignored", in such entries too; those leave the result whole.)
    """
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and _is_outcome(resource):
            for issue in resource.get("issue") or ():
                if isinstance(issue, dict) and issue.get("severity") in ("error", "fatal"):
                    return True
    return False


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _follow(bundle: dict[str, Any], request: HookRequest, client: FhirClient, timeout: float,
            deadline: float) -> dict[str, Any]:
    """Merge every page of a paginated searchset into one bundle."""
    entries = list(bundle.get("entry") or [])
    url = _next_link(bundle)
    pages = 1
    seen: set[str] = set()
    while url:
        if request.fhir_server is None:
            raise FetchError("bundle is paginated and there is no fhirServer to follow it")
        url = urljoin(request.fhir_server + "/", url)
        base = allowlist.parse(request.fhir_server)
        if base is None or not allowlist.within(url, base):  # origin + path segments, never a string prefix
            raise FetchError("next link points outside fhirServer")
        if url in seen:  # a next link back to itself or an earlier page would be followed until MAX_PAGES
            raise FetchError("next links form a cycle")
        seen.add(url)
        pages += 1
        remaining = deadline - time.monotonic()
        if pages > MAX_PAGES or remaining <= 0:
            raise FetchError("too many pages or out of time")
        page = client.get(url, request.access_token, min(timeout, remaining))
        if page.get("resourceType") != "Bundle":
            raise FetchError("next page is not a Bundle")
        entries.extend(page.get("entry") or [])
        url = _next_link(page)
    merged = {k: v for k, v in bundle.items() if k not in ("link", "entry")}
    merged["entry"] = entries
    return merged


def _fetch(key: str, rtype: str, request: HookRequest, templates: dict[str, str], client: FhirClient,
           now: dt.datetime, lookback_h: dict[str, float], timeout: float, deadline: float) -> Any:
    assert request.fhir_server is not None
    url = request.fhir_server + "/" + render_template(templates[key], request)
    date_param = TEMPLATES[rtype][2]
    if date_param and rtype in lookback_h:
        since = (now - dt.timedelta(hours=lookback_h[rtype])).strftime("%Y-%m-%dT%H:%M:%SZ")
        url += f"&{date_param}=ge{since}"
    if "?" in url:
        url += "&_count=200"
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("out of time")
    data = client.get(url, request.access_token, min(timeout, remaining))
    if _is_outcome(data):
        raise FetchError("server answered an OperationOutcome")
    if "?" in templates[key]:
        if data.get("resourceType") != "Bundle":
            raise FetchError("search did not answer a Bundle")
        merged = _follow(data, request, client, timeout, deadline)
        if _error_entry(merged):
            raise FetchError("search answered with an error OperationOutcome entry (incomplete)")
        return merged
    return data


def resolve(request: HookRequest, templates: dict[str, str], client: FhirClient | None, now: dt.datetime,
            lookback_h: dict[str, float], timeout: float, deadline: float) -> Resolved:
    """Every key the service needs, from prefetch or from fhirServer; 412 naming what is missing.

    `deadline` is the caller's (time.monotonic()) by which every read of the call must be done.
    """
    result = Resolved({})
    missing: list[str] = []
    for key in templates:
        if key in request.prefetch:
            value = request.prefetch[key]
            if value is None:
                result.sources[key] = "null"  # the client has no data of this kind: no fetch, no 412
                continue
            if _is_outcome(value) or not isinstance(value, dict) or (
                    value.get("resourceType") == "Bundle" and _error_entry(value)):
                missing.append(key)  # incomplete: fetch it, else 412
                continue
            if value.get("resourceType") == "Bundle" and _next_link(value):
                try:
                    result.payloads[key] = _follow(value, request, client, timeout, deadline) if client else None
                except FetchError as exc:
                    raise PrefetchUnavailable([key], "its next pages could not be fetched from fhirServer",
                                              detail=str(exc)) from exc
                if result.payloads[key] is None:
                    raise PrefetchUnavailable([key], "paginated prefetch and no FHIR client")
                if _error_entry(result.payloads[key]):
                    missing.append(key)
                    del result.payloads[key]
                    continue
                result.sources[key] = "prefetch+pages"
                continue
            result.payloads[key] = value
            result.sources[key] = "prefetch"
        else:
            missing.append(key)
    if not missing:
        return result
    if request.fhir_server is None or client is None:
        raise PrefetchUnavailable(missing, "not prefetched and no fhirServer to fetch from")
    futures = {key: _POOL.submit(_fetch, key, TYPE_OF_KEY[key], request, templates, client, now, lookback_h,
                                 timeout, deadline) for key in missing}
    wait(futures.values(), timeout=max(deadline - time.monotonic(), 0))
    failed: list[str] = []
    reasons: list[str] = []
    for key, future in futures.items():
        if not future.done():
            future.cancel()
            failed.append(key)
            reasons.append(f"{key}: deadline passed")
            continue
        try:
            result.payloads[key] = future.result()
            result.sources[key] = "fetched"
        except FetchError as exc:
            failed.append(key)
            reasons.append(f"{key}: {exc}")
    if failed:
        raise PrefetchUnavailable(failed, "could not be fetched from fhirServer", detail="; ".join(reasons))
    return result


def read_all(references: list[str], request: HookRequest, client: FhirClient | None, timeout: float,
             deadline: float) -> list[dict[str, Any]]:
    """Read resources (`Medication/x`) from fhirServer in parallel, within the request deadline.

    Best effort: a reference that cannot be read stays unresolved and the caller reports it.
    """
    if not references or client is None or request.fhir_server is None:
        return []
    base = request.fhir_server.rstrip("/") + "/"

    def read(ref: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("out of time")
        return client.get(base + quote(ref, safe="/"), request.access_token, min(timeout, remaining))

    futures = [_POOL.submit(read, ref) for ref in references]
    wait(futures, timeout=max(deadline - time.monotonic(), 0))
    found: list[dict[str, Any]] = []
    for future in futures:
        if not future.done():
            future.cancel()
            continue
        try:
            found.append(future.result())
        except FetchError:
            continue
    return found
