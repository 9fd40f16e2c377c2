"""CDS client authentication: JWTs verified against allow-listed issuers and their keys (PyJWT).

Checks (CDS Hooks 2.0 "Trusting CDS Clients"): asymmetric `alg` only, `kid` in the client's JWK Set
(refreshed once from its allow-listed `jku` on an unknown kid), `iss` allow-listed, `aud` equal to
the exact URL called, `exp`, `iat` not in the future, `jti` never replayed (shared store), `tenant`
allow-listed when the client lists tenants. Every failure is a bare 401; the reason is logged
without the token.
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

from . import yamlsource

log = logging.getLogger("protocol_engine.auth")

ALGORITHMS = ("ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS256", "PS384", "PS512")
REFRESH_INTERVAL_S = 60.0


class AuthError(Exception):
    """Why a token was refused; logged, never sent to the caller."""


class ReplayCache(Protocol):
    def claim_token(self, iss: str, jti: str, expires_at: dt.datetime, now: dt.datetime) -> bool: ...


@dataclass
class Client:
    iss: str
    jwks_url: str | None = None
    keys: dict[str, PyJWK] = field(default_factory=dict)
    tenants: tuple[str, ...] = ()
    audience: str | None = None
    last_refresh: float = 0.0


def _keys_of(jwks: Any) -> dict[str, PyJWK]:
    keys: dict[str, PyJWK] = {}
    for jwk in (jwks or {}).get("keys", []):
        if not isinstance(jwk, dict) or "kid" not in jwk:
            continue
        if jwk.get("kty") == "oct":
            continue  # symmetric keys are never trusted (CDS Hooks: SHALL NOT be symmetric)
        try:
            keys[str(jwk["kid"])] = PyJWK(jwk)
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
                        audience=(str(entry["audience"]).rstrip("/") if entry.get("audience") else None))
        if entry.get("jwks"):
            client.keys = _keys_of(entry["jwks"])
        elif entry.get("jwks_file"):
            jwks_path = Path(entry["jwks_file"])
            if not jwks_path.is_absolute():
                jwks_path = path.parent / jwks_path
            client.keys = _keys_of(json.loads(jwks_path.read_text(encoding="utf-8")))
        elif not client.jwks_url:
            raise ValueError(f"{path}: client {client.iss} needs jwks_url, jwks or jwks_file")
        clients[client.iss] = client
    return clients


class Verifier:
    def __init__(self, clients: dict[str, Client], replay: ReplayCache, leeway_s: int = 60,
                 allow_http_jwks: bool = False) -> None:
        self.clients = clients
        self.replay = replay
        self.leeway = leeway_s
        self.allow_http_jwks = allow_http_jwks
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=3.0, follow_redirects=False)

    def _refresh(self, client: Client) -> None:
        if not client.jwks_url:
            return
        if not (client.jwks_url.startswith("https://") or self.allow_http_jwks):
            raise AuthError("jwks_url is not https")
        with self._lock:
            if time.monotonic() - client.last_refresh < REFRESH_INTERVAL_S and client.keys:
                return
            client.last_refresh = time.monotonic()
            try:
                response = self._http.get(client.jwks_url)
                response.raise_for_status()
                client.keys = _keys_of(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                raise AuthError(f"JWKS fetch failed: {type(exc).__name__}") from exc

    def verify(self, header_value: str | None, url: str, path: str, now: dt.datetime) -> dict[str, Any]:
        """Return the verified claims, or raise AuthError."""
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
        key = client.keys.get(kid)
        if key is None:
            self._refresh(client)  # one refresh on an unknown kid: the client may have rotated keys
            key = client.keys.get(kid)
        if key is None:
            raise AuthError("unknown kid")
        audience = (client.audience + path) if client.audience else url
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=client.iss,
                                leeway=self.leeway, options={"require": ["exp", "iat", "jti", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {type(exc).__name__}") from exc
        if client.tenants and claims.get("tenant") not in client.tenants:
            raise AuthError("tenant not allow-listed")
        expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC) + dt.timedelta(seconds=self.leeway)
        if not self.replay.claim_token(client.iss, str(claims["jti"])[:255], expires, now):
            raise AuthError("jti replayed")
        return dict(claims)
