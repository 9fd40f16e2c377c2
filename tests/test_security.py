"""CDS client authentication AUTH-1..AUTH-7 with real keys generated in the test run."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import ADULT, KETAMINE_ORDER, bp, request_for
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir_server import FhirServer
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

BASE = "http://localhost"
ISS = "https://ehr.example.org"
SIGN = "/cds-services/ketamine-order-sign"


class Keys:
    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP384R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rotated = ec.generate_private_key(ec.SECP384R1())

    def jwks(self, include_rotated: bool = False) -> dict[str, Any]:
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        keys = [{**ec_jwk, "kid": "ec-1", "alg": "ES384"}, {**rsa_jwk, "kid": "rsa-1", "alg": "RS384"},
                {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"}]
        if include_rotated:
            keys.append({**json.loads(ECAlgorithm.to_jwk(self.rotated.public_key())), "kid": "ec-2", "alg": "ES384"})
        return {"keys": keys}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


class JwksServer:
    def __init__(self, keys: Keys) -> None:
        self.hits = 0
        self.rotated = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                body = json.dumps(keys.jwks(include_rotated=outer.rotated)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def jwks_server(keys: Keys) -> Any:
    server = JwksServer(keys)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture()
def secure_app(tmp_path: Path, keys: Keys, jwks_server: JwksServer) -> Any:
    from server import create_app

    clients = {"clients": [
        {"iss": ISS, "jwks": keys.jwks(), "tenants": ["hospital-a"]},
        {"iss": "https://rotating.example.org", "jwks_url": jwks_server.url},
    ]}
    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps(clients))
    app = create_app({"auth": "required", "clients": str(path), "database_url": f"sqlite:///{tmp_path}/pe.db",
                      "reload_interval": 0, "allow_http_jwks": True})
    yield app
    app.extensions["protocol_engine"]["audit"].flush()


def token(keys: Keys, aud: Any, *, alg: str = "ES384", kid: str = "ec-1", iss: str = ISS, exp_in: int = 300,
          iat_offset: int = 0, jti: str | None = None, extra: dict[str, Any] | None = None,
          headers: dict[str, Any] | None = None, key: Any = None) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "exp": now + exp_in, "iat": now + iat_offset, "jti": jti or str(uuid.uuid4()),
              "tenant": "hospital-a", **(extra or {})}
    signing = key or (keys.ec if alg.startswith("ES") else keys.rsa)
    return jwt.encode(claims, signing, algorithm=alg, headers={"kid": kid, "typ": "JWT", **(headers or {})})


def _get(app: Any, path: str, tok: str | None) -> Any:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return app.test_client().get(path, headers=headers)


def _post(app: Any, path: str, tok: str | None, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return app.test_client().post(path, json=body, headers=headers)


def test_auth_1_missing_or_garbled_authorization_is_401_with_no_detail(secure_app: Any) -> None:
    for header in (None, "Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", "Bearer " + "A" * 5000):
        headers = {"Authorization": header} if header else {}
        response = secure_app.test_client().get("/cds-services", headers=headers)
        # one fixed OperationOutcome (probe 17b: an empty text/html body), never the reason (that is logged)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content_type == "application/fhir+json"
        assert response.json["resourceType"] == "OperationOutcome" and response.json["issue"][0]["code"] == "login"
        assert response.json == _get(secure_app, "/cds-services", None).json


def test_a_doubled_slash_is_a_json_404_not_an_html_redirect(secure_app: Any, keys: Keys) -> None:
    """Probe 17b: `//cds-services` got werkzeug's HTML 308 with a Location built from the Host header."""
    for path in ("//cds-services", "/cds-services//ketamine-order-sign", "//healthz", "/cds-services//"):
        # PATH_INFO as a server hands it over (the test client would read "//x" as a host name)
        response = secure_app.test_client().get("/", environ_overrides={"PATH_INFO": path}, headers={
            "Authorization": f"Bearer {token(keys, BASE + path)}"})
        assert response.status_code == 404 and "Location" not in response.headers, (path, response.status_code)
        assert response.content_type == "application/fhir+json" and response.json["resourceType"] == "OperationOutcome"


def test_auth_2_alg_none_hmac_and_unknown_kid_are_refused(secure_app: Any, keys: Keys, jwks_server: JwksServer) -> None:
    aud = BASE + "/cds-services"
    none_token = jwt.encode({"iss": ISS, "aud": aud, "exp": int(time.time()) + 60, "iat": int(time.time()),
                             "jti": "n1"}, None, algorithm="none", headers={"kid": "ec-1"})
    assert _get(secure_app, "/cds-services", none_token).status_code == 401
    hmac = jwt.encode({"iss": ISS, "aud": aud, "exp": int(time.time()) + 60, "iat": int(time.time()), "jti": "h1"},
                      "a-shared-secret-of-at-least-32-bytes!!", algorithm="HS256", headers={"kid": "hmac-1"})
    assert _get(secure_app, "/cds-services", hmac).status_code == 401
    assert _get(secure_app, "/cds-services", token(keys, aud, kid="nope")).status_code == 401
    # A jku-based client: its key set was fetched at start; an unknown kid is refused without any fetch.
    assert secure_app.extensions["protocol_engine"]["verifier"].refreshed.wait(5)
    before = jwks_server.hits
    assert before == 1
    tok = token(keys, aud, iss="https://rotating.example.org", kid="ec-9")
    assert _get(secure_app, "/cds-services", tok).status_code == 401
    assert jwks_server.hits == before


def test_auth_2_key_rotation_is_picked_up_from_the_jku(secure_app: Any, keys: Keys, jwks_server: JwksServer) -> None:
    aud = BASE + "/cds-services"
    verifier = secure_app.extensions["protocol_engine"]["verifier"]
    assert verifier.refreshed.wait(5)
    first = token(keys, aud, iss="https://rotating.example.org", kid="ec-1")
    assert _get(secure_app, "/cds-services", first).status_code == 200
    jwks_server.rotated = True
    rotated = token(keys, aud, iss="https://rotating.example.org", kid="ec-2", key=keys.rotated)
    assert _get(secure_app, "/cds-services", rotated).status_code == 401  # not before the next refresh
    verifier.refresh_now()  # what the background thread does every PROTOCOL_ENGINE_JWKS_REFRESH seconds
    rotated = token(keys, aud, iss="https://rotating.example.org", kid="ec-2", key=keys.rotated)
    assert _get(secure_app, "/cds-services", rotated).status_code == 200


def test_auth_3_issuer_jku_and_tenant_must_be_allow_listed(secure_app: Any, keys: Keys) -> None:
    aud = BASE + "/cds-services"
    assert _get(secure_app, "/cds-services", token(keys, aud, iss="https://evil.example")).status_code == 401
    bad_jku = token(keys, aud, headers={"jku": "https://evil.example/jwks.json"})
    assert _get(secure_app, "/cds-services", bad_jku).status_code == 401
    other_tenant = token(keys, aud, extra={"tenant": "hospital-b"})
    assert _get(secure_app, "/cds-services", other_tenant).status_code == 401


def test_auth_4_audience_is_the_exact_url_called(secure_app: Any, keys: Keys, loaded: Any) -> None:
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER, "given": [bp(120, 80)]})
    discovery, service = BASE + "/cds-services", BASE + SIGN
    assert _get(secure_app, "/cds-services", token(keys, service)).status_code == 401
    assert _post(secure_app, SIGN, token(keys, discovery), body).status_code == 401
    assert _post(secure_app, SIGN, token(keys, service + "/feedback"), body).status_code == 401
    assert _post(secure_app, SIGN, token(keys, service), body).status_code == 200
    assert _post(secure_app, SIGN, token(keys, ["https://other.example", service]), body).status_code == 200
    feedback = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                              "outcomeTimestamp": "2026-11-21T10:00:00Z"}]}
    assert _post(secure_app, SIGN + "/feedback", token(keys, service), feedback).status_code == 401
    # A card not on record is stored and reconciled by uuid (its trace may still be in another worker's batch).
    assert _post(secure_app, SIGN + "/feedback", token(keys, service + "/feedback"), feedback).status_code == 200


def test_auth_5_expired_future_and_replayed_tokens(secure_app: Any, keys: Keys) -> None:
    aud = BASE + "/cds-services"
    assert _get(secure_app, "/cds-services", token(keys, aud, exp_in=-120)).status_code == 401
    assert _get(secure_app, "/cds-services", token(keys, aud, iat_offset=3600)).status_code == 401
    once = token(keys, aud, jti="replay-me")
    assert _get(secure_app, "/cds-services", once).status_code == 200
    assert _get(secure_app, "/cds-services", once).status_code == 401


def test_auth_5_replay_cache_is_shared_by_workers(secure_app: Any, keys: Keys, tmp_path: Path) -> None:
    """A second app on the same database (another worker) refuses a jti the first accepted."""
    from server import create_app

    settings = secure_app.extensions["protocol_engine"]["settings"]
    other = create_app({"auth": "required", "clients": str(settings.clients), "database_url": settings.database_url,
                        "reload_interval": 0})
    once = token(keys, BASE + "/cds-services")
    assert _get(secure_app, "/cds-services", once).status_code == 200
    assert _get(other, "/cds-services", once).status_code == 401
    other.extensions["protocol_engine"]["audit"].flush()


def test_auth_6_es384_rs384_and_epic_style_claims_are_accepted(secure_app: Any, keys: Keys) -> None:
    aud = BASE + "/cds-services"
    now = int(time.time())
    assert _get(secure_app, "/cds-services", token(keys, aud, alg="ES384", kid="ec-1")).status_code == 200
    assert _get(secure_app, "/cds-services", token(keys, aud, alg="RS384", kid="rsa-1")).status_code == 200
    epic = token(keys, aud, alg="RS384", kid="rsa-1", extra={"nbf": now - 300, "sub": "epic-client-id"})
    assert _get(secure_app, "/cds-services", epic).status_code == 200


def test_auth_7_logs_and_records_never_hold_tokens_or_free_text(
        secure_app: Any, keys: Keys, loaded: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = FhirServer([], page_size=5)
    try:
        body = request_for(loaded, "ketamine-order-sign", {
            "patient": ADULT, "order": KETAMINE_ORDER,
            "given": [bp(190, 110), {"condition": "ICD10#F20.9 Patient says the voices are back"}]})
        del body["prefetch"]["medicationStatements"]
        access_token = "fhir-access-token-" + uuid.uuid4().hex
        secure_app.extensions["protocol_engine"]["verifier"].clients[ISS].fhir_servers = (server.base,)
        body.update(fhirServer=server.base, fhirAuthorization={"access_token": access_token, "token_type": "Bearer",
                                                                "expires_in": 300, "scope": "user/*.read",
                                                                "subject": "svc"})
        tokens = [token(keys, BASE + "/cds-services"), token(keys, BASE + SIGN), token(keys, BASE + SIGN + "/feedback")]
        assert _get(secure_app, "/cds-services", tokens[0]).status_code == 200
        response = _post(secure_app, SIGN, tokens[1], body)
        assert response.status_code == 200
        card = response.json["cards"][0]
        feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                                  "outcomeTimestamp": "2026-11-21T10:00:00Z",
                                  "overrideReason": {"reason": card["overrideReasons"][0],
                                                     "userComment": "Patient Jane Doe said it is fine"}}]}
        assert _post(secure_app, SIGN + "/feedback", tokens[2], feedback).status_code == 200
        assert _get(secure_app, "/cds-services", "garbage." + tokens[0]).status_code == 401
        assert server.requests and server.requests[0]["authorization"] == f"Bearer {access_token}"
    finally:
        server.close()
    secure_app.extensions["protocol_engine"]["audit"].flush()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    store = secure_app.extensions["protocol_engine"]["store"]
    with store.engine.connect() as conn:
        from sqlalchemy import text

        dumped = json.dumps([[list(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {t}"))]
                             for t in ("decision", "card", "feedback", "seen_token")])
    for secret in [*tokens, access_token, "voices are back", "Jane Doe"]:
        assert secret not in logged, secret[:20]
        assert secret not in dumped, secret[:20]
    assert "eyJ" not in logged and "eyJ" not in dumped


def test_demo_mode_is_explicit_and_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from server import create_app

    caplog.set_level(logging.WARNING)
    app = create_app({"auth": "disabled", "database_url": f"sqlite:///{tmp_path}/pe.db", "reload_interval": 0})
    assert any("AUTHENTICATION DISABLED" in r.getMessage() for r in caplog.records)
    app.extensions["protocol_engine"]["audit"].flush()
    required = create_app({"database_url": f"sqlite:///{tmp_path}/pe2.db", "reload_interval": 0})
    assert required.test_client().get("/cds-services").status_code == 401  # on by default
    required.extensions["protocol_engine"]["audit"].flush()


def test_sandbox_client_file_trusts_the_public_sandbox_key() -> None:
    from protocol_engine.runtime.security import load_clients

    root = Path(__file__).resolve().parent.parent
    clients = load_clients(root / "examples" / "clients.sandbox.yaml")
    shared = json.loads((root.parent / "shared" / "cds-hooks" / "sandbox-jwks.json").read_text()) if (
        root.parent / "shared" / "cds-hooks" / "sandbox-jwks.json").exists() else None
    client = clients["https://sandbox.cds-hooks.org"]
    assert "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f" in client.keys
    if shared:
        assert shared["keys"][0]["kid"] in client.keys


# -- issue 17: hardening ----------------------------------------------------------------------
def test_a_foreign_host_header_never_changes_the_accepted_audience(secure_app: Any, keys: Keys) -> None:
    """Probe: with no audience configured, `aud` was built from the caller's Host header."""
    foreign = token(keys, "http://other-cds.example/cds-services")
    response = secure_app.test_client().get("/cds-services", headers={"Authorization": f"Bearer {foreign}",
                                                                       "Host": "other-cds.example"})
    assert response.status_code == 401
    ours = token(keys, BASE + "/cds-services")
    assert _get(secure_app, "/cds-services", ours).status_code == 200  # loopback Host is trusted by default


def test_the_public_url_fixes_the_audience_whatever_the_host(tmp_path: Path, keys: Keys) -> None:
    from server import create_app

    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": keys.jwks()}]}))
    app = create_app({"auth": "required", "clients": str(path), "database_url": f"sqlite:///{tmp_path}/pe.db",
                      "reload_interval": 0, "public_url": "https://cds.example.org/"})
    try:
        client = app.test_client()
        for host in ("cds.example.org", "other-cds.example", "localhost"):
            good = token(keys, "https://cds.example.org/cds-services", extra={"tenant": None})
            bad = token(keys, f"http://{host}/cds-services")
            headers = {"Host": host}
            assert client.get("/cds-services", headers={**headers, "Authorization": f"Bearer {good}"}).status_code == 200
            assert client.get("/cds-services", headers={**headers, "Authorization": f"Bearer {bad}"}).status_code == 401
    finally:
        app.extensions["protocol_engine"]["audit"].flush()


class _FailingJwks:
    """A JWKS endpoint that answers 500 after `delay` seconds, counting calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                time.sleep(delay)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_forged_tokens_cost_no_outbound_request_and_failures_back_off(tmp_path: Path, keys: Keys) -> None:
    """Probe: every forged token with an unknown kid fetched the JWKS under one process-wide lock, unthrottled."""
    from server import create_app

    jwks = _FailingJwks(delay=1.0)
    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps({"clients": [{"iss": "https://jku.example", "jwks_url": jwks.url},
                                            {"iss": ISS, "jwks": keys.jwks()}]}))
    app = create_app({"auth": "required", "clients": str(path), "database_url": f"sqlite:///{tmp_path}/pe.db",
                      "reload_interval": 0, "allow_http_jwks": True})
    try:
        verifier = app.extensions["protocol_engine"]["verifier"]
        assert verifier.refreshed.wait(5)
        assert jwks.hits == 1  # fetched at start (and failed)
        started = time.monotonic()
        for n in range(20):
            forged = token(keys, BASE + "/cds-services", iss="https://jku.example", kid=f"forged-{n}")
            assert _get(app, "/cds-services", forged).status_code == 401
        assert time.monotonic() - started < 3.0  # no caller waited on the slow JWKS endpoint
        assert _get(app, "/cds-services", token(keys, BASE + "/cds-services")).status_code == 200
        assert jwks.hits == 1  # forged tokens cost no outbound request; the next retry waits RETRY_FIRST_S
        client = verifier.clients["https://jku.example"]
        assert client.failures == 1 and client.next_refresh - time.monotonic() > 1.0
    finally:
        verifier.close()
        jwks.httpd.shutdown()
        jwks.httpd.server_close()
        app.extensions["protocol_engine"]["audit"].flush()


def test_an_alg_of_another_key_type_or_an_absurd_exp_is_401_not_500(secure_app: Any, keys: Keys) -> None:
    aud = BASE + "/cds-services"
    rs_on_ec = jwt.encode({"iss": ISS, "aud": aud, "exp": int(time.time()) + 60, "iat": int(time.time()),
                           "jti": str(uuid.uuid4()), "tenant": "hospital-a"}, keys.rsa, algorithm="RS384",
                          headers={"kid": "ec-1"})
    assert _get(secure_app, "/cds-services", rs_on_ec).status_code == 401
    p256 = ec.generate_private_key(ec.SECP256R1())  # an ES256 signature presented for the P-384 key's kid
    assert _get(secure_app, "/cds-services", token(keys, aud, alg="ES256", key=p256)).status_code == 401
    year_10000 = token(keys, aud, extra={"exp": 253402300800})
    assert _get(secure_app, "/cds-services", year_10000).status_code == 401
    huge = token(keys, aud, extra={"exp": 10**30})
    assert _get(secure_app, "/cds-services", huge).status_code == 401


def test_tokens_living_longer_than_the_maximum_are_refused(secure_app: Any, keys: Keys, tmp_path: Path) -> None:
    from server import create_app

    aud = BASE + "/cds-services"
    assert _get(secure_app, "/cds-services", token(keys, aud, exp_in=300)).status_code == 200
    assert _get(secure_app, "/cds-services", token(keys, aud, exp_in=301)).status_code == 401
    assert _get(secure_app, "/cds-services", token(keys, aud, exp_in=3 * 365 * 86400)).status_code == 401
    settings = secure_app.extensions["protocol_engine"]["settings"]
    longer = create_app({"auth": "required", "clients": str(settings.clients), "reload_interval": 0,
                         "database_url": f"sqlite:///{tmp_path}/other.db", "jwt_max_lifetime": 3600})
    assert _get(longer, "/cds-services", token(keys, aud, exp_in=3600)).status_code == 200
    longer.extensions["protocol_engine"]["audit"].flush()


def test_a_long_jti_is_compared_whole(secure_app: Any, keys: Keys) -> None:
    """Probe: a jti over 255 characters was cut, so two tokens sharing 255 characters collided."""
    aud = BASE + "/cds-services"
    stem = "j" * 300
    assert _get(secure_app, "/cds-services", token(keys, aud, jti=stem + "-1")).status_code == 200
    assert _get(secure_app, "/cds-services", token(keys, aud, jti=stem + "-2")).status_code == 200
    replay = token(keys, aud, jti=stem + "-1")
    assert _get(secure_app, "/cds-services", replay).status_code == 401


def test_replay_store_down_fails_open_to_a_per_worker_cache_without_tracebacks(
        secure_app: Any, keys: Keys, loaded: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Probe: with the database down and authentication on, every call answered 500 with a traceback."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    store = secure_app.extensions["protocol_engine"]["store"]
    good_engine, good_session = store.engine, store.session
    broken = create_engine("postgresql+psycopg://nobody:x@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    store.engine, store.session = broken, sessionmaker(broken)
    caplog.set_level(logging.INFO)
    body = request_for(loaded, "ketamine-order-sign", {"patient": ADULT, "order": KETAMINE_ORDER,
                                                       "given": [bp(190, 110)]})
    try:
        once = token(keys, BASE + SIGN)
        response = _post(secure_app, SIGN, once, body)
        assert response.status_code == 200 and any(c["indicator"] == "critical" for c in response.json["cards"])
        assert _post(secure_app, SIGN, once, body).status_code == 401  # this worker remembers it
        for _ in range(5):
            assert _post(secure_app, SIGN, token(keys, BASE + SIGN), body).status_code == 200
    finally:
        store.engine, store.session = good_engine, good_session
        broken.dispose()
    assert not [r for r in caplog.records if r.exc_info], "no traceback per call"
    assert sum("replay store unavailable" in r.getMessage() for r in caplog.records) == 1


def test_expired_replay_rows_are_purged_whatever_the_second(tmp_path: Path) -> None:
    """Probe: replay rows were purged only by calls landing in second :00."""
    import datetime as dt

    from sqlalchemy import func, select

    from protocol_engine.runtime.store import SeenToken, Store

    store = Store(f"sqlite:///{tmp_path}/purge.db")
    store.migrate()
    now = dt.datetime(2026, 11, 30, 9, 0, 30, tzinfo=dt.UTC)
    for n in range(5):
        assert store.claim_token("iss", f"old-{n}", now - dt.timedelta(minutes=1), now - dt.timedelta(minutes=6))
    store._next_purge = 0.0
    assert store.claim_token("iss", "new", now + dt.timedelta(minutes=5), now)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(SeenToken)) == 1
    store.engine.dispose()


def test_migration_0002_keeps_refusing_tokens_seen_before_the_upgrade(db_url: str) -> None:
    import datetime as dt

    from sqlalchemy import text

    from protocol_engine.runtime.store import Store

    store = Store(db_url)
    store.migrate("0001")
    now = dt.datetime.now(dt.UTC)
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO seen_token (iss, jti, expires_at) VALUES (:i, :j, :e)"),
                     {"i": ISS, "j": "seen-before-upgrade", "e": now + dt.timedelta(minutes=5)})
    store.migrate()
    assert not store.claim_token(ISS, "seen-before-upgrade", now + dt.timedelta(minutes=5), now)
    assert store.claim_token(ISS, "new-one", now + dt.timedelta(minutes=5), now)
    store.engine.dispose()


def test_a_token_alg_other_than_the_jwk_declared_alg_is_401(tmp_path: Path, keys: Keys) -> None:
    """Probe: a PS384 token was accepted for a JWK declaring `alg: RS384` (same RSA key, another algorithm)."""
    from server import create_app

    bare = json.loads(RSAAlgorithm.to_jwk(keys.rsa.public_key()))  # RFC 7517: a JWK's `alg` is OPTIONAL
    jwks = {"keys": [*keys.jwks()["keys"], {**bare, "kid": "rsa-bare"}]}
    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": jwks}]}))
    app = create_app({"auth": "required", "clients": str(path), "database_url": f"sqlite:///{tmp_path}/pe.db",
                      "reload_interval": 0})
    aud = BASE + "/cds-services"
    try:
        status = {(alg, kid): _get(app, "/cds-services", token(keys, aud, alg=alg, kid=kid)).status_code
                  for alg, kid in [("PS384", "rsa-1"), ("RS384", "rsa-1"), ("RS512", "rsa-1"), ("ES384", "ec-1"),
                                   ("PS384", "rsa-bare"), ("RS384", "rsa-bare"), ("ES384", "rsa-bare")]}
        assert status == {("PS384", "rsa-1"): 401, ("RS384", "rsa-1"): 200, ("RS512", "rsa-1"): 401,
                          ("ES384", "ec-1"): 200,
                          # no declared alg: any algorithm of the key's type, none of another
                          ("PS384", "rsa-bare"): 200, ("RS384", "rsa-bare"): 200, ("ES384", "rsa-bare"): 401}
    finally:
        app.extensions["protocol_engine"]["audit"].flush()


# -- the URL called, when no public URL is configured (scheme, host and port exactly) -----------------------------
def _app_with(tmp_path: Path, keys: Keys, **config: Any) -> Any:
    from server import create_app

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": keys.jwks()}]}))
    return create_app({"auth": "required", "clients": str(path), "database_url": f"sqlite:///{tmp_path}/pe.db",
                       "reload_interval": 0, **config})


def _status(app: Any, aud: str, base_url: str = "http://localhost", **headers: str) -> int:
    from urllib.parse import urlsplit

    tok = token(app.config["TEST_KEYS"], aud)
    listening = urlsplit(base_url).port or 80  # as a server sets it: the port it listens on (werkzeug's test
    response = app.test_client().get("/cds-services", base_url=base_url,  # client gets it wrong for [::1])
                                     environ_overrides={"SERVER_PORT": str(listening)},
                                     headers={"Authorization": f"Bearer {tok}", **headers})
    return int(response.status_code)


def test_a_trusted_host_name_on_another_port_is_another_service(tmp_path: Path, keys: Keys) -> None:
    """Probe: `Host: localhost:9999` and a token minted for http://localhost:9999 were accepted on another port."""
    app = _app_with(tmp_path, keys)
    app.config["TEST_KEYS"] = keys
    try:
        assert _status(app, "http://localhost/cds-services") == 200  # served on port 80 (the test client's)
        assert _status(app, "http://localhost:9999/cds-services", Host="localhost:9999") == 401
        assert _status(app, "http://localhost:8080/cds-services", "http://localhost:8080") == 200
        assert _status(app, "http://localhost/cds-services", "http://localhost:8080", Host="localhost") == 401
        assert _status(app, "http://[::1]:8080/cds-services", "http://[::1]:8080") == 200
        assert _status(app, "http://127.0.0.1.evil:8080/cds-services", "http://127.0.0.1.evil:8080") == 401
        assert _status(app, "http://localhost:x/cds-services", Host="localhost:x") == 401  # not host[:port]
    finally:
        app.extensions["protocol_engine"]["audit"].flush()


def test_x_forwarded_headers_count_only_from_the_configured_proxies(tmp_path: Path, keys: Keys) -> None:
    """Probe: `X-Forwarded-Proto: https` from any client made `https://…` the accepted audience."""
    direct = _app_with(tmp_path / "direct", keys)
    direct.config["TEST_KEYS"] = keys
    proxied = _app_with(tmp_path / "proxied", keys, proxy_hops=1)
    proxied.config["TEST_KEYS"] = keys
    https = "https://localhost/cds-services"
    try:
        assert _status(direct, https, **{"X-Forwarded-Proto": "https"}) == 401
        assert _status(direct, "http://localhost/cds-services", **{"X-Forwarded-Proto": "https"}) == 200
        assert _status(direct, "http://localhost:8443/cds-services",
                       **{"X-Forwarded-Port": "8443", "X-Forwarded-Host": "localhost:8443"}) == 401
        # One proxy in front (nginx: Host $host, X-Forwarded-Proto $scheme): the URL it was called at
        assert _status(proxied, https, **{"X-Forwarded-Proto": "https"}) == 200
        assert _status(proxied, "http://localhost/cds-services", **{"X-Forwarded-Proto": "https"}) == 401
        assert _status(proxied, "https://localhost:8443/cds-services",
                       **{"X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"}) == 200
        assert _status(proxied, "https://localhost:9999/cds-services",
                       **{"X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443", "Host": "localhost:9999"}) == 401
        assert _status(proxied, "https://other-cds.example/cds-services",
                       **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "other-cds.example"}) == 401
    finally:
        for app in (direct, proxied):
            app.extensions["protocol_engine"]["audit"].flush()


def test_a_trusted_host_entry_with_a_port_pins_it(tmp_path: Path, keys: Keys) -> None:
    app = _app_with(tmp_path, keys, trusted_hosts="localhost:8080,.internal.example")
    app.config["TEST_KEYS"] = keys
    try:
        assert _status(app, "http://localhost:8080/cds-services", "http://localhost:8080") == 200
        assert _status(app, "http://localhost:8081/cds-services", "http://localhost:8081") == 401
        assert _status(app, "http://127.0.0.1:8080/cds-services", "http://127.0.0.1:8080") == 401
        assert _status(app, "http://cds.internal.example/cds-services", "http://cds.internal.example") == 200
        assert _status(app, "http://internal.example.evil/cds-services", "http://internal.example.evil") == 401
    finally:
        app.extensions["protocol_engine"]["audit"].flush()


def test_an_oversized_jwks_is_refused_as_it_arrives_and_the_last_good_keys_stay(
        tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    """Probe 17b: a 196 MiB JWKS answer was read whole (workers at ~880 MiB). Now streamed with a byte cap."""
    import tracemalloc

    from protocol_engine.runtime.security import Client, Verifier

    mode = {"huge": False, "declared": False}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if not mode["huge"]:
                body = json.dumps(keys.jwks()).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if mode["declared"]:
                self.send_header("Content-Length", str(64 * 1024 * 1024))
            self.end_headers()  # HTTP/1.0, no length: the body ends when the connection closes
            try:
                self.wfile.write(b'{"keys": [' + b" " * 100)
                for _ in range(64):  # 64 MiB of padding, if the reader keeps reading
                    self.wfile.write(b" " * (1024 * 1024))
            except OSError:
                pass  # the reader hung up at its cap

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = Client(iss="https://jku.example", jwks_url=f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json")
    verifier = Verifier({client.iss: client}, replay=None, allow_http_jwks=True,  # type: ignore[arg-type]
                        max_jwks_bytes=256 * 1024)
    try:
        assert verifier.refreshed.wait(10) and "ec-1" in client.keys  # the good set, fetched at start
        good = dict(client.keys)
        caplog.set_level(logging.WARNING)
        for declared in (False, True):
            mode.update(huge=True, declared=declared)
            tracemalloc.start()
            verifier.refresh_now()
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held for a capped download"
            assert client.keys == good and client.failures >= 1
        assert any("byte cap" in r.getMessage() for r in caplog.records)
    finally:
        verifier.close()
        httpd.shutdown()
        httpd.server_close()


def test_host_names_compare_case_insensitively_and_an_address_must_be_the_one_reached(
        tmp_path: Path, keys: Keys) -> None:
    """Probe 17b: `Host: LOCALHOST` refused a token for http://localhost; `Host: [::1]` accepted on a 127.0.0.1
    listener (another address than the one reached)."""

    class Sock:
        def __init__(self, address: str) -> None:
            self.address = address

        def getsockname(self) -> tuple[str, int]:
            return (self.address, 8080)

    app = _app_with(tmp_path, keys)

    def status(aud: str, host: str, local: str | None) -> int:
        environ: dict[str, Any] = {"SERVER_PORT": "8080"}
        if local:
            environ["gunicorn.socket"] = Sock(local)
        response = app.test_client().get("/cds-services", base_url="http://localhost:8080", environ_overrides=environ,
                                         headers={"Authorization": f"Bearer {token(keys, aud)}", "Host": host})
        return int(response.status_code)

    try:
        assert status("http://localhost:8080/cds-services", "LOCALHOST:8080", "127.0.0.1") == 200
        assert status("http://localhost:8080/cds-services", "LocalHost:8080", None) == 200
        assert status("http://127.0.0.1:8080/cds-services", "127.0.0.1:8080", "127.0.0.1") == 200
        assert status("http://[::1]:8080/cds-services", "[::1]:8080", "127.0.0.1") == 401
        assert status("http://127.0.0.1:8080/cds-services", "127.0.0.1:8080", "::1") == 401
        assert status("http://[::1]:8080/cds-services", "[::1]:8080", "::1") == 200
        assert status("http://127.0.0.1:8080/cds-services", "127.0.0.1:8080", "::ffff:127.0.0.1") == 200
    finally:
        app.extensions["protocol_engine"]["audit"].flush()
