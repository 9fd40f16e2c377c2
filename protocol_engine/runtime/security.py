"""CDS client authentication: JWTs verified against allow-listed issuers and their keys (PyJWT).

Checks (CDS Hooks 2.0 "Trusting CDS Clients"): asymmetric `alg` only, of the key's type and equal to the key's
own `alg` when its JWK declares one (RFC 7517 4.4: a key meant for RS384 does not verify PS384), `kid` in the
client's JWK Set, `iss` allow-listed, `aud` equal to the exact URL called as configured (public URL or the
client's audience; never a Host header we were not told to trust), `exp` at most `jwt_max_lifetime` after
`iat`, `iat` not in the future, `jti` never replayed (shared store), `tenant` allow-listed when the client lists
tenants. Every failure is a bare 401; the reason is logged without the token.

Key sets behind a `jwks_url` are fetched at start and refreshed by one background thread on a schedule (with
back-off after failures), never because of a caller: a forged token with an unknown kid costs no outbound
request and no lock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from jwt import PyJWK

from ..pack import yamlsource

log = logging.getLogger("protocol_engine.auth")

ALGORITHMS = ("ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS256", "PS384", "PS512")
KEY_TYPE = {"ES": "EC", "RS": "RSA", "PS": "RSA"}  # alg family -> the JWK kty that can verify it
REFRESH_INTERVAL_S = 300.0
MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few kB; PROTOCOL_ENGINE_JWKS_MAX_BYTES
JWKS_DEADLINE_S = 10.0  # for one whole download
RETRY_FIRST_S = 5.0  # back-off after a failed JWKS fetch: 5 s, 10 s, 20 s ... up to the refresh interval


class AuthError(Exception):
    """Why a token was refused; logged, never sent to the caller."""


class ReplayCache(Protocol):
    def claim_token(self, iss: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool: ...


class TrustedKey(PyJWK):
    """A client's public key and the `alg` its JWK declares (None when it declares none)."""

    def __init__(self, jwk: dict[str, Any]) -> None:
        super().__init__(jwk)
        declared = jwk.get("alg")
        self.declared_alg: str | None = str(declared) if declared is not None else None


@dataclass
class Client:
    iss: str
    jwks_url: str | None = None
    keys: dict[str, TrustedKey] = field(default_factory=dict)
    tenants: tuple[str, ...] = ()
    audience: str | None = None
    fhir_servers: tuple[str, ...] = ()
    static_keys: dict[str, TrustedKey] = field(default_factory=dict)  # from jwks / jwks_file, kept across refreshes
    next_refresh: float = 0.0
    failures: int = 0


def _keys_of(jwks: Any) -> dict[str, TrustedKey]:
    keys: dict[str, TrustedKey] = {}
    for jwk in (jwks or {}).get("keys", []):
        if not isinstance(jwk, dict) or "kid" not in jwk:
            continue
        if jwk.get("kty") == "oct":
            continue  # symmetric keys are never trusted (CDS Hooks: SHALL NOT be symmetric)
        try:
            keys[str(jwk["kid"])] = TrustedKey(jwk)
        except Exception as exc:
            log.warning("skipping unusable JWK", extra={"kid": jwk.get("kid"), "error": type(exc).__name__})
    return keys


def load_clients(path: Path) -> dict[str, Client]:
    """Read the trusted-clients YAML file (PROTOCOL_ENGINE_CLIENTS)."""
    data, diags = yamlsource.load(path)
    if diags:
        raise ValueError(diags[0].render())
    raw = yamlsource.plain(data) or {}
    entries = raw.get("clients", raw) if isinstance(raw, dict) else raw
    clients: dict[str, Client] = {}
    for entry in entries or []:
        if not isinstance(entry, dict) or not entry.get("iss"):
            raise ValueError(f"{path}: every client needs 'iss'")
        client = Client(iss=str(entry["iss"]), jwks_url=entry.get("jwks_url") or entry.get("jku"),
                        tenants=tuple(str(t) for t in entry.get("tenants") or ()),
                        audience=(str(entry["audience"]).rstrip("/") if entry.get("audience") else None),
                        fhir_servers=tuple(str(u) for u in entry.get("fhir_servers") or ()))
        if isinstance(entry.get("fhir_servers"), str):
            raise ValueError(f"{path}: client {client.iss}: fhir_servers must be a list of base URLs")
        from adapters.fhir.allowlist import AllowList

        AllowList(client.fhir_servers)  # refuse to start on an entry that is not an http(s) base URL
        if entry.get("jwks"):
            client.keys = _keys_of(entry["jwks"])
        elif entry.get("jwks_file"):
            jwks_path = Path(entry["jwks_file"])
            if not jwks_path.is_absolute():
                jwks_path = path.parent / jwks_path
            client.keys = _keys_of(json.loads(jwks_path.read_text(encoding="utf-8")))
        elif not client.jwks_url:
            raise ValueError(f"{path}: client {client.iss} needs jwks_url, jwks or jwks_file")
        client.static_keys = dict(client.keys)
        clients[client.iss] = client
    return clients


class Verifier:
    def __init__(self, clients: dict[str, Client], replay: ReplayCache, leeway_s: int = 60,
                 allow_http_jwks: bool = False, max_lifetime_s: int = 300,
                 refresh_s: float = REFRESH_INTERVAL_S, max_jwks_bytes: int = MAX_JWKS_BYTES) -> None:
        self.clients = clients
        self.max_jwks_bytes = max_jwks_bytes
        self.replay = replay
        self.leeway = leeway_s
        self.max_lifetime = max_lifetime_s
        self.refresh_s = refresh_s
        self.allow_http_jwks = allow_http_jwks
        self._http = httpx.Client(timeout=3.0, follow_redirects=False, trust_env=False)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.refreshed = threading.Event()  # set after the first round of fetches (tests, readiness)
        self._thread: threading.Thread | None = None
        if any(c.jwks_url for c in clients.values()):
            self._thread = threading.Thread(target=self._refresher, name="jwks-refresh", daemon=True)
            self._thread.start()
        else:
            self.refreshed.set()

    def _fetch(self, client: Client) -> None:
        """Fetch one client's key set (no lock: the new dict replaces the old one in one assignment)."""
        assert client.jwks_url is not None
        now = time.monotonic()
        if not (client.jwks_url.startswith("https://") or self.allow_http_jwks):
            log.error("jwks_url of %s is not https; its key set is not fetched", client.iss)
            client.next_refresh = now + self.refresh_s
            return
        try:
            keys = _keys_of(json.loads(self._download(client.jwks_url)))
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            client.failures += 1
            delay = min(self.refresh_s, RETRY_FIRST_S * 2 ** (client.failures - 1))
            client.next_refresh = now + delay
            log.warning("JWKS fetch for %s failed (%s: %s); keeping %d known key(s), retry in %.0f s",
                        client.iss, type(exc).__name__, str(exc)[:200], len(client.keys), delay)
            return
        if not keys:
            log.warning("JWKS of %s holds no usable key; keeping the %d known", client.iss, len(client.keys))
        else:
            client.keys = {**client.static_keys, **keys}
        client.failures = 0
        client.next_refresh = now + self.refresh_s

    def _download(self, url: str) -> bytes:
        """The key set's bytes, streamed: refused past `max_jwks_bytes` (as they arrive, never buffered whole)
        or after JWKS_DEADLINE_S in all (a server dripping bytes defeats a per-read timeout)."""
        deadline = time.monotonic() + JWKS_DEADLINE_S
        with self._http.stream("GET", url) as response:
            response.raise_for_status()
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_jwks_bytes:
                raise ValueError(f"JWKS of {int(declared)} bytes is over the {self.max_jwks_bytes}-byte cap")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_jwks_bytes:
                    raise ValueError(f"JWKS over the {self.max_jwks_bytes}-byte cap")
                if time.monotonic() > deadline:
                    raise ValueError(f"JWKS not received within {JWKS_DEADLINE_S:.0f} s")
                chunks.append(chunk)
        return b"".join(chunks)

    def refresh_due(self) -> None:
        """Fetch every key set whose time has come (the background thread's round; callable from tests)."""
        for client in list(self.clients.values()):
            if client.jwks_url and time.monotonic() >= client.next_refresh:
                self._fetch(client)

    def refresh_now(self) -> None:
        for client in self.clients.values():
            client.next_refresh = 0.0
        self.refresh_due()

    def _refresher(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_due()
            except Exception:  # never let the refresher die: the last good keys keep serving
                log.exception("JWKS refresh round failed")
            self.refreshed.set()
            due = [c.next_refresh for c in self.clients.values() if c.jwks_url]
            wait = max(0.5, min(due, default=time.monotonic() + self.refresh_s) - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def verify(self, header_value: str | None, url: str, path: str, now: dt.datetime) -> dict[str, Any]:
        """Return the verified claims, or raise AuthError. `url` is the configured public URL of the call."""
        if not header_value or not header_value.startswith("Bearer "):
            raise AuthError("no bearer token")
        token = header_value[len("Bearer "):].strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {type(exc).__name__}") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError(f"algorithm {alg!r} not allowed")
        if header.get("typ") not in (None, "JWT", "jwt"):
            raise AuthError("typ is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("no kid")
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise AuthError(f"issuer not allow-listed: {str(iss)[:100]!r}")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise AuthError("jku not allow-listed for this issuer")
        key = client.keys.get(kid)  # never a fetch here: key sets are refreshed in the background
        if key is None:
            raise AuthError("unknown kid")
        if KEY_TYPE[str(alg)[:2]] != key.key_type:
            raise AuthError(f"alg {alg} does not match the {key.key_type} key {kid!r}")
        if key.declared_alg is not None and key.declared_alg != alg:
            raise AuthError(f"alg {alg} is not the {key.declared_alg} declared by key {kid!r}")
        audience = (client.audience + path) if client.audience else url
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=client.iss,
                                leeway=self.leeway, options={"require": ["exp", "iat", "jti", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {type(exc).__name__}") from exc
        except Exception as exc:  # a key PyJWT cannot use with this alg (curve mismatch ...) is a refusal, not a 500
            raise AuthError(f"token not verifiable: {type(exc).__name__}") from exc
        exp, iat = claims["exp"], claims["iat"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, iat)):
            raise AuthError("exp and iat must be numbers")
        if exp - iat > self.max_lifetime:
            raise AuthError(f"token lives {exp - iat:.0f} s, more than the {self.max_lifetime} s allowed")
        if client.tenants and claims.get("tenant") not in client.tenants:
            raise AuthError("tenant not allow-listed")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("jti must be a non-empty string")
        expires = dt.datetime.fromtimestamp(int(exp), dt.UTC) + dt.timedelta(seconds=self.leeway)
        if not self.replay.claim_token(client.iss, jti, expires, now):
            raise AuthError("jti replayed")
        return dict(claims)
