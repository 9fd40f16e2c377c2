"""The Flask app factory; with protocol_engine/http/, the only code that knows HTTP. `gunicorn 'server:create_app()'`.

It builds the service (settings, rules, store, JWT verifier, FHIR client), authenticates every call, answers
every error as an OperationOutcome and registers the views, which live in protocol_engine/http/ as blueprints:
cds (the CDS Hooks endpoints), operations (health, metrics, OpenAPI, rule pages, analytics) and demo (the page).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from adapters.fhir.allowlist import AllowList
from adapters.fhir.client import FhirClient, HttpxFhirClient
from protocol_engine.core.errors import ProtocolEngineError
from protocol_engine.http import jsonio
from protocol_engine.http.cds import cds
from protocol_engine.http.common import outcome
from protocol_engine.http.demo import demo
from protocol_engine.http.operations import operations
from protocol_engine.runtime import called_url, metrics
from protocol_engine.runtime.audit import AuditWriter
from protocol_engine.runtime.config import Settings, load_settings
from protocol_engine.runtime.logs import configure_logging
from protocol_engine.runtime.registry import Registry
from protocol_engine.runtime.replay import FailOpenReplay
from protocol_engine.runtime.security import AuthError, Verifier, load_clients
from protocol_engine.runtime.store import Store

log = logging.getLogger("protocol_engine.http")
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/", "/openapi.json", "/static/", "/demo/", "/favicon.ico")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: rules loaded and validated, store migrated, auth configured."""
    settings: Settings = load_settings(config)
    configure_logging()
    app = Flask(__name__, static_folder=None)
    # `//cds-services` is not a path of ours: a JSON 404, not werkzeug's HTML 308 to a Location built from the
    # Host header (which ignores PROTOCOL_ENGINE_PUBLIC_URL). Set before any rule is bound.
    app.url_map.merge_slashes = False
    if settings.proxy_hops:  # X-Forwarded-* believed from exactly this many proxies in front, never from a client
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.json = jsonio.Provider(app)  # orjson where it writes what the standard library writes (http/jsonio.py)
    app.json.sort_keys = False
    app.json.ensure_ascii = False

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
                            max_lifetime_s=settings.jwt_max_lifetime, refresh_s=settings.jwks_refresh,
                            max_jwks_bytes=settings.jwks_max_bytes)
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

    def expected_url() -> str:
        """The URL the caller's JWT must name: from configuration, or a Host we were told to trust."""
        if settings.public_url:
            return settings.public_url + request.path
        try:
            called_url.check(request.scheme, request.host, request.environ, settings.trusted_hosts)
        except called_url.UntrustedUrl as exc:
            raise AuthError(str(exc)) from exc
        scheme, _, rest = request.base_url.partition("://")
        netloc, slash, path = rest.partition("/")
        return f"{scheme.lower()}://{netloc.lower()}{slash}{path}"  # host names compare case-insensitively
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), allow_headers=["Authorization", "Content-Type"],
             methods=["GET", "POST", "OPTIONS"], max_age=600)
    loaded = registry.current.packset
    log.warning("protocol-engine ready: rule set %s, %d rules, services %s, database %s",
                loaded.revision, len(loaded.all_rules()), ", ".join(sorted(loaded.services)),
                store.engine.url.render_as_string(hide_password=True))

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        g.now = dt.datetime.now(dt.UTC)
        if "//" in request.environ.get("PATH_INFO", ""):  # no path of ours has an empty segment
            return outcome(404, "not-found", "not found")
        if request.method == "OPTIONS" or verifier is None:
            return None
        if request.path in OPEN_PATHS or request.path.startswith(("/static/", "/demo/", "/analytics/")):
            return None
        try:
            g.claims = verifier.verify(request.headers.get("Authorization"), expected_url(), request.path, g.now)
        except AuthError as exc:
            metrics.AUTH_FAILURES.inc()
            log.warning("401 %s %s: %s", request.method, request.path, exc)
            response = outcome(401, "login", "authentication required: a valid CDS client JWT in Authorization")
            response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
            return response
        return None

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    for blueprint in (cds, operations, demo):
        app.register_blueprint(blueprint)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}.get(status, "invalid")
        message = {413: f"the body is larger than the limit of {settings.max_body} bytes",
                   405: f"{request.method} is not allowed on {request.path}"}.get(status, exc.description or "")
        response = outcome(status, code, message)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def server_error(exc: Exception) -> Response:
        if isinstance(exc, ProtocolEngineError) and exc.status < 500:
            return outcome(exc.status, exc.code, str(exc))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return outcome(500, "exception", "internal error; it has been logged")

    return app
