"""What operators and protocol owners read: health, readiness, metrics, OpenAPI, the rule catalogue and rule pages,
and override analytics."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, g, jsonify, request

from ..authoring import rulepage
from ..authoring.catalogue import catalogue
from ..core.errors import BadRequest
from ..runtime import metrics
from ..runtime.analytics import activity, period
from ..runtime.deadline import Bounded, DeadlineExceeded
from ..runtime.openapi import openapi_document
from .common import current, log, outcome, registry, settings, store

operations = Blueprint("operations", __name__)
READINESS_DB = Bounded("readyz", 1.0, slots=2)  # readiness asks the database, briefly; liveness never does


@operations.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@operations.get("/readyz")
def readyz() -> Response:
    try:
        ok_db = READINESS_DB.call(store().ping)
    except DeadlineExceeded:
        ok_db = False
    loaded = registry().current
    body = {"status": "ok" if ok_db else "unavailable", "ruleset": loaded.packset.revision,
            "rules": len(loaded.packset.all_rules()), "database": "ok" if ok_db else "unavailable",
            "lastReloadErrors": len(registry().last_errors)}
    response = jsonify(body)
    response.status_code = 200 if ok_db else 503
    return response


@operations.get("/metrics")
def metrics_endpoint() -> Response:
    return Response(metrics.render(), mimetype="text/plain; version=0.0.4")


@operations.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(sorted(registry().current.runtimes)))


@operations.get("/rules")
def rules_catalogue() -> Response:
    return jsonify(catalogue(current().packset))


@operations.get("/analytics/data")
def analytics_data() -> Response:
    """Override analytics for the protocol's owners; with auth on, behind PROTOCOL_ENGINE_ADMIN_TOKEN
    (people, not EHRs, read it: CDS client JWTs do not open it)."""
    config = settings()
    if config.auth == "required":
        if not config.admin_token:
            return outcome(403, "forbidden", "analytics are off: set PROTOCOL_ENGINE_ADMIN_TOKEN to open them")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), config.admin_token.encode()):
            response = outcome(401, "login", "analytics need the operator token (PROTOCOL_ENGINE_ADMIN_TOKEN)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="analytics"'
            return response
    try:
        since, until, bucket = period(request.args, g.now)
        return jsonify(activity(store(), registry().current.packset, since, until, bucket))
    except BadRequest as exc:
        return outcome(400, "invalid", str(exc), exc.field)
    except Exception as exc:
        metrics.DB_ERRORS.labels("analytics").inc()
        log.error("analytics not read: %s", type(exc).__name__)
        return outcome(503, "transient", "the store is unavailable; retry later")


@operations.get("/rules/<rule_id>")
def rule_page(rule_id: str) -> Response:
    """The rule's page for clinical reviewers, generated from its files (HTML)."""
    loaded = registry().current
    found = rulepage.find(loaded.packset, rule_id)
    if found is None:
        return outcome(404, "not-found", "no such rule")
    page = rulepage.build(loaded.packset, loaded.runtimes, *found, shipped=loaded.shipped)
    return Response(rulepage.to_html(page), mimetype="text/html")
