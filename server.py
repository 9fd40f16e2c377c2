"""The Flask app factory: the only module that knows HTTP. `gunicorn 'server:create_app()'`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request, send_from_directory
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from adapters.fhir.allowlist import AllowList
from adapters.fhir.client import AllowListedClient, ByteBudget, FhirClient, HttpxFhirClient
from protocol_engine.core.engine import EngineError
from protocol_engine.core.errors import BadRequest, PrefetchUnavailable, ProtocolEngineError
from protocol_engine.hooks.pipeline import discovery, run
from protocol_engine.runtime import called_url, metrics
from protocol_engine.runtime.audit import AuditWriter
from protocol_engine.runtime.config import Settings, load_settings
from protocol_engine.runtime.feedback import parse_feedback
from protocol_engine.runtime.logs import configure_logging
from protocol_engine.runtime.openapi import openapi_document
from protocol_engine.runtime.outcome import operation_outcome
from protocol_engine.runtime.registry import Loaded, Registry
from protocol_engine.runtime.replay import FailOpenReplay
from protocol_engine.runtime.security import AuthError, Verifier, load_clients
from protocol_engine.runtime.store import Store

log = logging.getLogger("protocol_engine.http")
STATIC = Path(__file__).resolve().parent / "protocol_engine" / "static"
JSON_TYPES = ("application/json", "application/fhir+json")
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/", "/openapi.json", "/static/", "/demo/", "/favicon.ico")


def _outcome(status: int, code: str, message: str, field: str | None = None) -> Response:
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


def _body() -> Any:
    mime = (request.mimetype or "").lower()
    if mime not in JSON_TYPES:
        raise _Unsupported()
    raw = _raw_body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("the body is not valid JSON", "body") from exc


class _Unsupported(Exception):
    pass


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: rules loaded and validated, store migrated, auth configured."""
    settings: Settings = load_settings(config)
    configure_logging()
    app = Flask(__name__, static_folder=None)
    if settings.proxy_hops:  # X-Forwarded-* believed from exactly this many proxies in front, never from a client
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    registry = Registry(settings.rules, settings.site, settings.clients)
    reload_interval = float(settings.extra.get("reload_interval", 2.0))
    if reload_interval > 0:
        registry.watch(reload_interval)
    metrics.check_directory(settings.database_url)
    store = Store(settings.database_url, dt.timedelta(days=settings.unmatched_feedback_days))
    store.migrate()
    audit = AuditWriter(store)
    client: FhirClient = settings.extra.get("fhir_client") or HttpxFhirClient(settings.fhir_max_bytes,
                                                                             settings.fhir_concurrency)
    verifier: Verifier | None = None
    if settings.auth == "required":
        clients = load_clients(settings.clients) if settings.clients else {}
        if not clients:
            log.warning("PROTOCOL_ENGINE_AUTH=required and no trusted clients: every call will get 401")
        verifier = Verifier(clients, FailOpenReplay(store), settings.jwt_leeway,
                            allow_http_jwks=bool(settings.extra.get("allow_http_jwks", False)),
                            max_lifetime_s=settings.jwt_max_lifetime, refresh_s=settings.jwks_refresh)
        if not settings.public_url and not all(c.audience for c in clients.values()):
            log.warning("no PROTOCOL_ENGINE_PUBLIC_URL: JWT aud is checked against the Host header only for "
                        "trusted hosts (%s); set the public URL EHRs call", ", ".join(settings.trusted_hosts))
    else:
        log.warning("!" * 78)
        log.warning("AUTHENTICATION DISABLED (PROTOCOL_ENGINE_AUTH=disabled): any caller can invoke the "
                    "services. For a local demo only; never expose this service like this.")
        log.warning("!" * 78)
    # With authentication off, the one allow-list for every caller (tests replace it to trust their loopback server).
    AllowList(settings.fhir_servers)  # refuse to start on an entry that is not an http(s) base URL
    app.extensions["protocol_engine"] = {"registry": registry, "store": store, "audit": audit,
                                         "settings": settings, "verifier": verifier,
                                         "fhir_servers": settings.fhir_servers, "fhir_client": client}

    def fhir_client() -> AllowListedClient:
        """The fetcher for this call: only the FHIR servers its caller is allowed to name, within its byte budget."""
        if verifier is not None:
            caller = verifier.clients.get(str(g.claims.get("iss"))) if "claims" in g else None
            entries = caller.fhir_servers if caller else ()
        else:
            entries = app.extensions["protocol_engine"]["fhir_servers"]
        return AllowListedClient(client, AllowList(entries), ByteBudget(settings.fhir_request_max_bytes))

    def expected_url() -> str:
        """The URL the caller's JWT must name: from configuration, or a Host we were told to trust."""
        if settings.public_url:
            return settings.public_url + request.path
        try:
            called_url.check(request.scheme, request.host, request.environ, settings.trusted_hosts)
        except called_url.UntrustedUrl as exc:
            raise AuthError(str(exc)) from exc
        return request.base_url
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), allow_headers=["Authorization", "Content-Type"],
             methods=["GET", "POST", "OPTIONS"], max_age=600)
    loaded = registry.current.ruleset
    log.warning("protocol-engine ready: rule set %s, %d rules, services %s, database %s",
                loaded.revision, len(loaded.all_rules()), ", ".join(sorted(loaded.services)),
                store.engine.url.render_as_string(hide_password=True))

    def _current() -> Loaded:
        """The rule set for this caller: its tenant's site settings when the clients file gives it some."""
        return registry.current.for_tenant((g.get("claims") or {}).get("tenant"))

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        g.now = dt.datetime.now(dt.UTC)
        if request.method == "OPTIONS" or verifier is None:
            return None
        if request.path in OPEN_PATHS or request.path.startswith(("/static/", "/demo/", "/analytics/")):
            return None
        try:
            g.claims = verifier.verify(request.headers.get("Authorization"), expected_url(), request.path, g.now)
        except AuthError as exc:
            metrics.AUTH_FAILURES.inc()
            log.warning("401 %s %s: %s", request.method, request.path, exc)
            response = Response(status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
            return response
        return None

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/cds-services")
    def discover() -> Response:
        return jsonify(discovery(_current().runtimes))

    @app.post("/cds-services/<service_id>")
    def invoke(service_id: str) -> Response:
        current = _current()
        if service_id not in current.runtimes:
            return _outcome(404, "not-found", f"no CDS service with id '{service_id[:64]}'")
        try:
            body = _body()
            decision = run(current.runtimes, current.ruleset.revision, service_id, body, g.now, fhir_client(),
                           settings.fhir_timeout, settings.request_deadline)
        except _Unsupported:
            return _outcome(415, "not-supported", "send the request as application/json")
        except PrefetchUnavailable as exc:
            metrics.FETCH_ERRORS.labels(service_id).inc()
            log.warning("412 %s: %s%s", service_id, exc, f" ({exc.detail})" if exc.detail else "")
            return _outcome(412, "processing", f"required data unavailable for prefetch key(s) "
                                               f"{', '.join(exc.keys)}: {exc.reason}", exc.keys[0])
        except BadRequest as exc:
            return _outcome(400, "invalid", str(exc), exc.field)
        except EngineError:
            log.exception("rule evaluation failed for service %s", service_id)
            return _outcome(500, "exception", "rule evaluation failed; the error has been logged")
        trace = decision.trace()
        total = time.perf_counter() - g.started
        metrics.LATENCY.labels(service_id).observe(total)
        for stage, ms in decision.timings.items():
            if stage != "total_ms":
                metrics.STAGE.labels(service_id, stage.removesuffix("_ms")).observe(ms / 1000)
        for card in decision.issued:
            metrics.CARDS.labels(card.rule.id, card.json["indicator"]).inc()
        if decision.skipped is None:
            audit.record(trace, f"Patient/{decision.patient_id}", g.now)
        response = jsonify({"cards": decision.cards})
        if request.args.get("trace") == "1" and settings.extra.get("expose_trace", settings.auth == "disabled"):
            response = jsonify({"cards": decision.cards, "extension": {"protocol-engine-trace": trace}})
        return response

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> Response:
        if service_id not in registry.current.runtimes:
            return _outcome(404, "not-found", f"no CDS service with id '{service_id[:64]}'")
        try:
            items = parse_feedback(_body(), service_id, settings.max_feedback_items)
        except _Unsupported:
            return _outcome(415, "not-supported", "send the feedback as application/json")
        except BadRequest as exc:
            return _outcome(exc.status, exc.code, str(exc), exc.field)
        uuids = [i["card_uuid"] for i in items]
        try:
            # Feedback for a card not (yet) on record is stored all the same: its trace may still be in another
            # worker's write batch, or the database was away when it was served. The report joins feedback to
            # cards by uuid, so it is reconciled as soon as the card's row lands; an EHR is never told "never".
            unmatched = len(set(uuids) - store.known_cards(uuids))
            added = store.add_feedback(items, g.now)
        except Exception as exc:
            metrics.DB_ERRORS.labels("feedback").inc()
            log.error("feedback not stored: %s", type(exc).__name__)
            response = _outcome(503, "transient", "feedback could not be stored; retry later")
            response.headers["Retry-After"] = "5"
            return response
        if unmatched:
            metrics.FEEDBACK_UNMATCHED.inc(unmatched)
        return jsonify({"stored": added, "received": len(items)})

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        ok_db = store.ping()
        current = registry.current
        body = {"status": "ok" if ok_db else "unavailable", "ruleset": current.ruleset.revision,
                "rules": len(current.ruleset.all_rules()), "database": "ok" if ok_db else "unavailable",
                "lastReloadErrors": len(registry.last_errors)}
        response = jsonify(body)
        response.status_code = 200 if ok_db else 503
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document(sorted(registry.current.runtimes)))

    @app.get("/rules")
    def rules_catalogue() -> Response:
        from protocol_engine.authoring.catalogue import catalogue

        return jsonify(catalogue(_current().ruleset))

    @app.get("/analytics/data")
    def analytics_data() -> Response:
        """Override analytics for the protocol's owners; with auth on, behind PROTOCOL_ENGINE_ADMIN_TOKEN
        (people, not EHRs, read it: CDS client JWTs do not open it)."""
        import hmac

        from protocol_engine.runtime.analytics import activity, period

        if settings.auth == "required":
            if not settings.admin_token:
                return _outcome(403, "forbidden", "analytics are off: set PROTOCOL_ENGINE_ADMIN_TOKEN to open them")
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), settings.admin_token.encode()):
                response = _outcome(401, "login", "analytics need the operator token (PROTOCOL_ENGINE_ADMIN_TOKEN)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="analytics"'
                return response
        try:
            since, until, bucket = period(request.args, g.now)
            return jsonify(activity(store, registry.current.ruleset, since, until, bucket))
        except BadRequest as exc:
            return _outcome(400, "invalid", str(exc), exc.field)
        except Exception as exc:
            metrics.DB_ERRORS.labels("analytics").inc()
            log.error("analytics not read: %s", type(exc).__name__)
            return _outcome(503, "transient", "the store is unavailable; retry later")

    @app.get("/rules/<rule_id>")
    def rule_page(rule_id: str) -> Response:
        """The rule's page for clinical reviewers, generated from its files (HTML)."""
        from protocol_engine.authoring import rulepage

        current = registry.current
        found = rulepage.find(current.ruleset, rule_id)
        if found is None:
            return _outcome(404, "not-found", "no such rule")
        page = rulepage.build(current.ruleset, current.runtimes, *found)
        return Response(rulepage.to_html(page), mimetype="text/html")

    @app.get("/")
    def index() -> Response:
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC, name)

    @app.get("/demo/patients")
    def demo_patients() -> Response:
        from protocol_engine.authoring.samples import sample_index

        return jsonify(sample_index())

    @app.get("/demo/request")
    def demo_request() -> Response:
        """A ready CDS Hooks request for a sample patient and service (synthetic data only)."""
        from protocol_engine.authoring.samples import hook_request

        runtimes = registry.current.runtimes
        service_id = request.args.get("service", "")
        rt = runtimes.get(service_id)
        if rt is None:
            return _outcome(404, "not-found", "no such service")
        body = hook_request(request.args.get("patient", ""), rt.service.hook, g.now, rt.resource_types())
        if body is None:
            return _outcome(404, "not-found", "no such sample patient")
        return jsonify(body)

    @app.get("/demo/patients/<name>")
    def demo_patient(name: str) -> Response:
        from protocol_engine.authoring.samples import sample

        data = sample(name)
        if data is None:
            return _outcome(404, "not-found", "no such sample patient")
        return jsonify(data)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}.get(status, "invalid")
        message = {413: f"the body is larger than the limit of {settings.max_body} bytes",
                   405: f"{request.method} is not allowed on {request.path}"}.get(status, exc.description or "")
        response = _outcome(status, code, message)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def server_error(exc: Exception) -> Response:
        if isinstance(exc, ProtocolEngineError) and exc.status < 500:
            return _outcome(exc.status, exc.code, str(exc))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _outcome(500, "exception", "internal error; it has been logged")

    return app
